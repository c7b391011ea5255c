"""CPU precision: the choice per kind of processor (simulated by cpuinfo files), each scoring
precision against fp32 on the tiny model, training that calibrates and tests in the scoring
precision, classifier.json's record of it, and bad values."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import CPUINFO
from sentiment_lora.errors import UserError
from sentiment_lora.precision import (
    Cpu,
    parse_cpuinfo,
    scoring_budget,
    scoring_precision,
    this_cpu,
    training_precision,
)

# (training, scoring) defaults: bf16 scoring where it was measured to hold (AMX, AVX512-BF16),
# fp32 elsewhere; bf16 autocast training is opt-in everywhere (train.mixed_precision=bf16).
KINDS = {"amx": ("no", "bf16"), "avx512_bf16": ("no", "bf16"), "vnni": ("no", "fp32"), "plain": ("no", "fp32")}
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None


def _cpu(kind: str) -> Cpu:
    return parse_cpuinfo((CPUINFO / f"{kind}.txt").read_text())


@pytest.fixture
def simulate(monkeypatch):
    """Make this process see the processor of ``kind``."""

    def use(kind: str) -> None:
        monkeypatch.setenv("SENTIMENT_LORA_CPUINFO", str(CPUINFO / f"{kind}.txt"))
        this_cpu.cache_clear()

    yield use
    this_cpu.cache_clear()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_choice_per_processor(kind):
    cpu = _cpu(kind)
    assert cpu.kind == kind and cpu.model == f"Simulated {kind} processor"
    training, scoring = KINDS[kind]
    assert training_precision("auto", "cpu", cpu) == training
    assert scoring_precision("auto", "cpu", cpu=cpu) == scoring
    assert training_precision("no", "cpu", cpu) == "no" and scoring_precision("fp32", "cpu", cpu=cpu) == "fp32"
    # A narrow training precision the CPU would emulate trains in fp32, said once.
    said = []
    assert training_precision("bf16", "cpu", cpu, say=said.append) == ("bf16" if cpu.bf16 else "no")
    assert training_precision("fp16", "cpu", cpu, say=said.append) == "no"
    assert len(said) == (1 if cpu.bf16 else 2) and all("training in fp32" in line for line in said)
    for asked, units in (("bf16", cpu.bf16), ("int8", cpu.int8)):
        if units:
            assert scoring_precision(asked, "cpu", cpu=cpu) == asked
        else:
            with pytest.raises(UserError, match=f"--precision {asked} needs .* which this CPU"):
                scoring_precision(asked, "cpu", cpu=cpu)
    said = []
    kept = scoring_precision(None, "cpu", saved="bf16", cpu=cpu, say=said.append)
    assert kept == ("bf16" if cpu.bf16 else "fp32") and len(said) == (0 if cpu.bf16 else 1)
    # Larger scoring batches only where they were measured faster: bf16 on AMX tiles.
    assert scoring_budget(1024, scoring, cpu) == (2048 if (kind, scoring) == ("amx", "bf16") else 1024)
    assert scoring_budget(1024, "fp32", cpu) == 1024 and scoring_budget(None, scoring, cpu) is None


def test_precision_leaves_gpus_and_explicit_dtypes_alone():
    amx = _cpu("amx")
    assert scoring_precision("auto", "cuda", cpu=amx) == "fp32"  # the weights' dtype rules there
    assert scoring_precision("auto", "cpu", dtype="bfloat16", cpu=amx) == "fp32"
    with pytest.raises(UserError, match="both set"):
        scoring_precision("int8", "cpu", dtype="bfloat16", cpu=amx)
    with pytest.raises(UserError, match="not known"):
        scoring_precision("int4", "cpu", cpu=amx)


def test_this_cpu_reads_the_real_flags_without_the_override(monkeypatch):
    monkeypatch.delenv("SENTIMENT_LORA_CPUINFO")
    this_cpu.cache_clear()
    try:
        cpu = this_cpu()
        real = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
        assert set(cpu.flags) <= set(real) and cpu.model
    finally:
        this_cpu.cache_clear()


@pytest.mark.parametrize("precision, bound", [("bf16", 0.05), pytest.param(
    "int8", 0.1, marks=pytest.mark.skipif(not HAS_TORCHAO, reason="torchao is not installed"))])
def test_scoring_precision_stays_near_fp32(tiny_run, simulate, precision, bound):
    from sentiment_lora.classifier import SentimentClassifier

    simulate("amx")
    texts = ["a great and moving film", "dull, boring, a waste", "the plot was a mess but the cast superb"] * 4
    fp32 = SentimentClassifier.load(tiny_run, device="cpu", precision="fp32")
    narrow = SentimentClassifier.load(tiny_run, device="cpu", precision=precision)
    assert (fp32.precision, narrow.precision) == ("fp32", precision)
    a, b = fp32.predict_proba(texts), narrow.predict_proba(texts)
    assert np.abs(a - b).max() < bound
    assert not np.array_equal(a, b)  # it did score in another precision
    if precision == "bf16":
        assert next(narrow.model.parameters()).dtype.is_floating_point
        assert str(next(narrow.model.parameters()).dtype) == "torch.bfloat16"


def test_spec_round_trip_with_precision(tiny_run):
    from sentiment_lora.spec import ClassifierSpec

    spec = dataclasses.replace(ClassifierSpec.load(tiny_run), precision="bf16")
    again = ClassifierSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again.precision == "bf16" and again == spec
    bad = {k: v for k, v in spec.to_dict().items() if k != "checksum"}
    bad["precision"] = "int4"
    with pytest.raises(UserError, match="precision 'int4' must be fp32, bf16 or int8"):
        ClassifierSpec.from_dict(bad)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, tiny_base_copy, tiny_data_dir):
    """The tiny run trained where the CPU has AMX, with bf16 autocast asked for; calibrated and
    tested in bf16, AMX's scoring default."""
    import os

    out = tmp_path_factory.mktemp("bf16") / "run"
    env = {**os.environ, "SENTIMENT_LORA_CPUINFO": str(CPUINFO / "amx.txt")}
    sets = [f"model.name_or_path={tiny_base_copy}", f"data.dataset={tiny_data_dir}", "model.device=cpu",
            "data.train_size=48", "data.val_size=16", "data.test_size=24", "prompt.max_length=40",
            "train.epochs=2", "train.lr=5e-3", "train.save_steps=0", "eval.calibrate=true", "eval.verify_samples=8",
            "train.mixed_precision=bf16", "eval.max_batch_tokens=100"]
    args = [sys.executable, "-m", "sentiment_lora.cli", "train", *[x for s in sets for x in ("--set", s)],
            "--output-dir", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_training_calibrates_and_tests_in_the_scoring_precision(bf16_run, simulate):
    from sentiment_lora.classifier import SentimentClassifier
    from sentiment_lora.config import load_config
    from sentiment_lora.data import prepare_data
    from sentiment_lora.decision import log_loss

    metrics = json.loads((bf16_run / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["train"]["mixed_precision"] == "bf16"
    assert metrics["train"]["cpu"]["kind"] == "amx"
    assert metrics["reload_check"]["max_prob_diff"] < 1e-6  # the test scores are the saved classifier's own
    assert json.loads((bf16_run / "classifier.json").read_text())["precision"] == "bf16"
    simulate("amx")
    cfg = load_config(bf16_run / "config.yaml")
    val = prepare_data(cfg.data, cfg.prompt.label_words).val
    before = metrics["calibration"]["validation"]["log_loss_before"]
    for precision, same in (("bf16", True), ("fp32", False)):
        clf = SentimentClassifier.load(bf16_run, device="cpu", precision=precision)
        clf.temperature = 1.0  # the validation scores calibration started from
        assert clf.max_batch_tokens == (200 if precision == "bf16" else 100)  # scoring_budget, as in training
        loss = log_loss(clf.predict_proba(val.texts), val.labels)
        assert math.isclose(loss, before, rel_tol=1e-9, abs_tol=1e-12) is same, (precision, loss, before)


def test_a_classifier_keeps_its_precision_where_the_cpu_has_it(bf16_run, simulate, tmp_path):
    from sentiment_lora.classifier import SentimentClassifier
    from sentiment_lora.export import export

    simulate("amx")
    folder = export(bf16_run, tmp_path / "exported", merge=True)
    clf = SentimentClassifier.load(folder, device="cpu")
    assert clf.precision == "bf16" and len(clf.predict(["a great film"])) == 1
    simulate("plain")
    assert SentimentClassifier.load(folder, device="cpu").precision == "fp32"


def test_bf16_training_asked_where_it_would_be_emulated_trains_in_fp32(tiny_base_copy, tiny_data_dir, tmp_path):
    import os

    env = {**os.environ, "SENTIMENT_LORA_CPUINFO": str(CPUINFO / "plain.txt")}
    sets = [f"model.name_or_path={tiny_base_copy}", f"data.dataset={tiny_data_dir}", "model.device=cpu",
            "data.train_size=16", "data.val_size=8", "data.test_size=8", "prompt.max_length=40", "train.epochs=1",
            "train.save_steps=0", "eval.calibrate=false", "eval.verify_samples=0", "train.mixed_precision=bf16"]
    args = [sys.executable, "-m", "sentiment_lora.cli", "train", *[x for s in sets for x in ("--set", s)],
            "--output-dir", str(tmp_path / "run")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout + done.stderr).count("has no bf16 units, so autocast would be emulated") == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["mixed_precision"] == "no" and metrics["train"]["cpu"]["kind"] == "plain"


@pytest.mark.parametrize("flag, kind, wording", [("int4", "amx", "invalid choice: 'int4'"),
                                                  ("int8", "plain", "--precision int8 needs"),
                                                  ("bf16", "vnni", "--precision bf16 needs")])
def test_bad_precision_is_one_line_and_exit_2(tiny_run, flag, kind, wording):
    import os

    env = {**os.environ, "SENTIMENT_LORA_CPUINFO": str(CPUINFO / f"{kind}.txt")}
    done = subprocess.run([sys.executable, "-m", "sentiment_lora.cli", "predict", str(tiny_run), "--precision",
                           flag, "a fine film"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and wording in lines[0], done.stderr
