"""No verb deletes or overwrites a file it did not write.

Every verb that writes a folder (train, evaluate, baseline, export, stack) or a file
(``predict --output``) is pointed at the output of every other verb, and must refuse with
one ``error:`` line and exit code 2, leaving every byte, name and mode there as it was.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from sentiment_lora.cli import main

TINY = ["--set", "model.device=cpu", "--set", "prompt.max_length=40", "--set", "train.save_steps=0",
        "--set", "data.train_size=48", "--set", "data.val_size=16", "--set", "data.test_size=24",
        "--set", "eval.batch_size=8"]


def _ok(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def outputs(tiny_run, tiny_model_dir, tiny_data_dir, tmp_path_factory) -> dict[str, Path]:
    """One folder per producing verb, each as that verb left it."""
    root = tmp_path_factory.mktemp("outputs")
    run = root / "train"
    shutil.copytree(tiny_run, run)
    _ok(["evaluate", str(run), "--limit", "8", "--device", "cpu", "--output-dir", str(root / "evaluate")])
    _ok(["baseline", "tfidf", "--dataset", str(tiny_data_dir), "--output-dir", str(root / "baseline-tfidf")])
    _ok(["baseline", "zero-shot", "--dataset", str(tiny_data_dir), "--set", f"model.name_or_path={tiny_model_dir}",
         *TINY, "--output-dir", str(root / "baseline-zero-shot")])
    _ok(["export", str(run), str(root / "export")])
    stacked = root / "stack"
    shutil.copytree(run, stacked)
    _ok(["stack", str(stacked), "--device", "cpu"])
    (root / "in.txt").write_text("a fine film\nan awful film\n")
    (root / "predict").mkdir()
    _ok(["predict", str(run), "--file", str(root / "in.txt"), "--output", str(root / "predict" / "out.jsonl"),
         "--device", "cpu"])
    return {p.name: p for p in root.iterdir() if p.is_dir()}


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with its content hash (files) and mode."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(folder))] = (digest, st.st_mode, st.st_mtime_ns)
    return out


def consumers(target: Path, run: Path, data: Path, model: Path) -> dict[str, list[str]]:
    """Each writing verb, aimed at ``target``."""
    jsonl = sorted(target.glob("*.jsonl"))
    return {
        "train": ["train", "--output-dir", str(target), "--set", f"model.name_or_path={model}",
                  "--set", f"data.dataset={data}", *TINY],
        "evaluate": ["evaluate", str(run), "--device", "cpu", "--output-dir", str(target)],
        "baseline": ["baseline", "tfidf", "--dataset", str(data), "--output-dir", str(target)],
        "export": ["export", str(run), str(target)],
        "stack": ["stack", str(target), "--device", "cpu"],
        "predict-folder": ["predict", str(run), "--file", str(target.parent / "in.txt"), "--output", str(target)],
        **{f"predict-{p.name}": ["predict", str(run), "--file", str(target.parent / "in.txt"), "--output", str(p)]
           for p in jsonl},
    }


# Verbs whose input is also their output: stack rewrites a classifier folder (a run or an
# export) in place, as it is meant to; every other pairing must be refused.
MEANT = {("stack", "train"), ("stack", "export"), ("stack", "stack")}
PRODUCERS = ["train", "evaluate", "baseline-tfidf", "baseline-zero-shot", "export", "stack", "predict"]


@pytest.mark.parametrize("producer", PRODUCERS)
def test_no_verb_touches_another_verbs_output(producer, outputs, tiny_run, tiny_data_dir, tiny_model_dir,
                                              capsys, tmp_path):
    target = tmp_path / producer
    shutil.copytree(outputs[producer], target, copy_function=shutil.copy2)
    shutil.copy2(outputs["predict"].parent / "in.txt", tmp_path / "in.txt")
    for verb, argv in consumers(target, tiny_run, tiny_data_dir, tiny_model_dir).items():
        if (verb, producer) in MEANT:
            continue
        before = snapshot(target)
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2, (verb, producer, code, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (verb, producer, err)
        assert snapshot(target) == before, (verb, producer)


def test_train_does_not_take_an_evaluation_for_an_early_stop(outputs, tiny_data_dir, tiny_model_dir, capsys, tmp_path):
    """The case that lost files: results without a config.yaml were read as a run that stopped
    before its first checkpoint, cleared and trained over."""
    target = tmp_path / "evaluated"
    shutil.copytree(outputs["evaluate"], target)
    before = snapshot(target)
    code = main(["train", "--output-dir", str(target), "--set", f"model.name_or_path={tiny_model_dir}",
                 "--set", f"data.dataset={tiny_data_dir}", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "no config.yaml of a training run" in err and "nothing there was touched" in err, err
    assert "starting over" not in err
    assert snapshot(target) == before


def test_a_hand_written_config_is_no_evidence(tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "config.yaml").write_text("train:\n  epochs: 1\n")
    code = main(["train", "--output-dir", str(target), "--set", f"model.name_or_path={tiny_model_dir}",
                 "--set", f"data.dataset={tiny_data_dir}", *TINY])
    assert code == 2 and "config.yaml that train did not write" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["config.yaml"]


def test_a_user_file_named_like_a_leftover_is_foreign(tmp_path):
    from sentiment_lora.checkpoint import folder_state
    from sentiment_lora.config import load_config

    target = tmp_path / "run"
    target.mkdir()
    load_config(None).save(target / "config.yaml")
    assert folder_state(target) == "restartable"
    (target / ".adapter.k3j9x2.old").mkdir()  # write_dir(replace=True) killed between its two renames
    assert folder_state(target) == "restartable"
    (target / ".notes.tmp").write_text("mine")
    assert folder_state(target) == "foreign"


def test_a_folder_filled_while_writing_is_not_replaced(tmp_path):
    from sentiment_lora.errors import UserError
    from sentiment_lora.storage import write_dir

    target = tmp_path / "out"
    target.mkdir()

    def fill(tmp: Path) -> None:
        (tmp / "metrics.json").write_text("{}")
        (target / "theirs.txt").write_text("arrived meanwhile")

    with pytest.raises(UserError, match="nothing there was touched"):
        write_dir(target, fill)
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_replacing_its_own_folder_leaves_a_look_alike_of_the_old_one_alone(tmp_path):
    from sentiment_lora.storage import write_dir

    theirs = tmp_path / ".adapter.old"  # a user's folder, named as the old copy once was
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    for version in ("1", "2"):
        write_dir(tmp_path / "adapter", lambda tmp, v=version: (tmp / "weights").write_text(v), replace=True)
    assert (tmp_path / "adapter" / "weights").read_text() == "2"
    assert (theirs / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".adapter.old", "adapter"]  # nothing of ours left


def test_two_evaluations_in_one_second_get_two_folders(tmp_path, monkeypatch):
    from datetime import datetime

    import sentiment_lora.evaluate as evaluate
    from sentiment_lora.evaluate import new_evaluation_dir

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 1, 12, 0, 0)

    monkeypatch.setattr(evaluate, "datetime", Frozen)
    first = new_evaluation_dir(tmp_path, "test")
    first.mkdir(parents=True)
    second = new_evaluation_dir(tmp_path, "test")
    assert second == first.with_name(f"{first.name}-2")
