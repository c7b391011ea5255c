"""Small fixes: the cache's warning and modes, the datasets cache, --resume with --config, non-finite
figures on the report, Ray's chatter, TF-IDF on tiny data, and the --debug traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sentiment_lora.cli import main
from sentiment_lora.config import ModelConfig
from sentiment_lora.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _load_gguf(tiny_gguf_dir) -> None:
    from sentiment_lora.model import load_base_model, load_tokenizer

    cfg = ModelConfig(name_or_path=str(tiny_gguf_dir), gguf_file="tiny.gguf", device="cpu")
    tok = load_tokenizer(cfg)
    load_base_model(cfg, torch.device("cpu"), torch.float32, tok.pad_token_id)


def _cache_warnings(err: str) -> list[str]:
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("warning: could not cache")]


def test_an_unwritable_cache_warns_once(tiny_gguf_dir, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SENTIMENT_LORA_CACHE", str(blocker / "cache"))  # cannot be created, even as root
    _load_gguf(tiny_gguf_dir)  # the tokenizer and the model: two cache entries, one cause
    assert len(_cache_warnings(capsys.readouterr().err)) == 1


def test_a_cache_owned_by_another_user_warns_once(tiny_gguf_dir, tmp_path, monkeypatch, capsys):
    import filelock

    def denied(path, *args, **kwargs):  # as opening another user's lock file fails
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setenv("SENTIMENT_LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(filelock, "FileLock", denied)
    _load_gguf(tiny_gguf_dir)
    warnings = _cache_warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and ".lock" not in warnings[0], warnings


def test_cache_entries_get_the_usual_modes(tmp_path, monkeypatch):
    from sentiment_lora.cache import cached_folder

    def build(folder: Path) -> None:
        (folder / "sub").mkdir()
        for path in (folder / "weights.bin", folder / "sub" / "part.bin"):
            path.write_bytes(b"data")
            path.chmod(0o600)  # as safetensors writes its files

    monkeypatch.setenv("SENTIMENT_LORA_CACHE", str(tmp_path / "cache"))
    entry = cached_folder("test", "key", build, "test entry")
    mask = _umask()
    for folder in (entry, entry / "sub"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask, folder
    for name in ("weights.bin", "sub/part.bin", "manifest.json"):
        assert stat.S_IMODE((entry / name).stat().st_mode) == 0o666 & ~mask, name


def test_an_unwritable_datasets_cache_is_named(tiny_data_dir, tmp_path, monkeypatch, capsys):
    import datasets.config

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", blocker / "datasets")  # as HOME unwritable makes it
    assert main(["baseline", "tfidf", "--dataset", str(tiny_data_dir), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:"), err
    assert str(blocker / "datasets") in err and "HF_HOME" in err and "Hub" not in err, err


def test_resume_refuses_a_config(tmp_path, capsys):
    config = tmp_path / "other.yaml"
    config.write_text("train:\n  epochs: 1\n")
    assert main(["train", "--resume", "--output-dir", str(tmp_path / "run"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.yaml" in err and "--set" in err, err


def test_the_report_shows_non_finite_figures_as_n_a(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(ece=float("nan"), accuracy_ci95=[float("nan"), float("inf")], roc_auc=float("-inf"))
    next(iter(metrics["per_class"].values()))["f1"] = float("nan")
    (run / "metrics.json").write_text(json.dumps(metrics))  # Python's json writes and reads NaN, Infinity
    assert main(["report", str(run)]) == 0
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (run / "report.html").read_text())
    assert not re.search(r"\b(nan|inf|-inf)\b", page, re.IGNORECASE), re.findall(r".{40}\bnan\b.{20}", page)
    assert "95% CI n/a–n/a" in page


@pytest.mark.slow
def test_ray_is_quiet_unless_verbose(tiny_run, tmp_path):
    pytest.importorskip("ray.data")
    import pandas as pd

    pd.DataFrame({"id": [f"r{i}" for i in range(20)],
                  "text": ["a great film" if i % 2 else "a dull mess" for i in range(20)]}).to_parquet(
        tmp_path / "in.parquet")
    env = {k: v for k, v in os.environ.items() if k != "SENTIMENT_LORA_VERBOSE"}
    cmd = [sys.executable, "-m", "sentiment_lora.cli", "predict", str(tiny_run), "--engine", "ray", "--file",
           str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--device", "cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("20 predictions in") and len(lines) < 5, done.stderr


def test_quiet_ray_leaves_ray_alone_when_verbose(monkeypatch):
    pytest.importorskip("ray.data")
    import logging

    from sentiment_lora.cluster import quiet_ray

    loggers = [logging.getLogger("ray"), logging.getLogger("ray.data")]
    before = [(lg.level, [h.level for h in lg.handlers]) for lg in loggers]
    monkeypatch.setenv("SENTIMENT_LORA_VERBOSE", "1")
    with quiet_ray():
        assert [(lg.level, [h.level for h in lg.handlers]) for lg in loggers] == before
    monkeypatch.delenv("SENTIMENT_LORA_VERBOSE")
    with quiet_ray():
        assert logging.getLogger("ray").getEffectiveLevel() >= logging.ERROR
    assert [(lg.level, [h.level for h in lg.handlers]) for lg in loggers] == before  # restored after


def _write_csv(folder: Path, rows: list[tuple[str, float]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        lines = ["text,label"] + [f"{text} {split},{label}" for text, label in rows]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_tfidf_on_four_rows_is_one_line(tmp_path, capsys):
    data = _write_csv(tmp_path / "four", [("great film", 1.0), ("awful film", 0.0), ("loved it", 1.0),
                                          ("hated it", 0.0)])
    assert main(["baseline", "tfidf", "--dataset", str(data), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err  # after the datasets library's bars, when it was imported before main ran
    assert err.splitlines()[-1].startswith("error:") and "internal error" not in err and "Traceback" not in err, err


def test_tfidf_chooses_c_by_cross_validation_on_small_data(tmp_path):
    import random

    from conftest import make_review
    from sentiment_lora.baseline import C_GRID, run_tfidf

    rng = random.Random(1)
    data = _write_csv(tmp_path / "small", [(make_review(rng, i % 2), float(i % 2)) for i in range(30)])
    m = run_tfidf(str(data), tmp_path / "o")
    assert m["C"] in C_GRID and m["cv_folds"] == 5 and set(m["cv_accuracy_by_C"]) == {str(c) for c in C_GRID}
    assert m["n"] == 30 and m["accuracy"] >= 0.8


def test_tfidf_names_the_minimum_when_a_class_is_too_small(tmp_path):
    import random

    from conftest import make_review
    from sentiment_lora.baseline import run_tfidf

    rng = random.Random(2)
    rows = [(make_review(rng, 1), 1.0) for _ in range(9)] + [(make_review(rng, 0), 0.0)]
    with pytest.raises(UserError, match="at least 2") as err:
        run_tfidf(str(_write_csv(tmp_path / "d", rows)), tmp_path / "o")
    assert "\n" not in str(err.value)


def test_tfidf_on_normal_data_keeps_its_held_out_sample(tiny_data_dir, tmp_path):
    from sentiment_lora.baseline import run_tfidf

    m = run_tfidf(str(tiny_data_dir), tmp_path / "o")
    assert m["val_size"] == 24 and "cv_folds" not in m  # 120 rows: a fifth held out, as before


FORCED = """
import sys
import sentiment_lora.cli as cli
from sentiment_lora.spec import ClassifierSpec
def boom(folder):
    print("a line on stdout")
    raise RuntimeError("boom")
ClassifierSpec.load = staticmethod(boom)
sys.argv = ["sentiment-lora", *sys.argv[1:]]
cli.entry()
"""


@pytest.mark.parametrize("debug", [False, True])
def test_the_error_report_keeps_to_its_own_lines(debug):
    """stdout and stderr into one pipe, as ``2>&1`` makes them: each report on lines of its own."""
    args = ["export", "a", "b"] + (["--debug"] if debug else [])
    done = subprocess.run([sys.executable, "-c", FORCED, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 1 and done.stdout.endswith("\n") and "a line on stdout" in lines, done.stdout
    if debug:
        assert "Traceback (most recent call last):" in lines and "RuntimeError: boom" in lines, done.stdout
        assert "internal error" not in done.stdout
    else:
        assert "internal error: RuntimeError: boom; rerun with --debug and report it" in lines, done.stdout


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_counts_before_the_verb_too(where):
    """``sentiment-lora --debug VERB`` used to be undone by the verb's own default: the user was
    told to rerun with --debug, which they had given."""
    args = ["--debug", "export", "a", "b"] if where == "before" else ["export", "a", "b", "--debug"]
    done = subprocess.run([sys.executable, "-c", FORCED, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)
    assert "Traceback (most recent call last):" in done.stdout and "internal error" not in done.stdout, done.stdout
