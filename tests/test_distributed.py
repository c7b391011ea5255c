"""Data-parallel training through the engines users launch it with (``accelerate launch``,
``torchrun``): two CPU processes on the gloo backend, the tiny model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# Equal global batches: 8 reviews a step, as 4 x 2 in one process or 2 x 2 in each of two.
ONE = ["train.batch_size=4", "train.grad_accum=2"]
TWO = ["train.batch_size=2", "train.grad_accum=2"]


def _sets(model: Path, data: Path, *extra: str) -> list[str]:
    # 7 validation and 15 test reviews: neither divides by two processes.
    return [f"model.name_or_path={model}", f"data.dataset={data}", "model.device=cpu", "data.train_size=48",
            "data.val_size=7", "data.test_size=15", "prompt.max_length=40", "train.epochs=2", "train.lr=5e-3",
            "train.logging_steps=1", "train.save_steps=0", "eval.batch_size=4", "eval.verify_samples=4",
            "eval.calibrate=true", *extra]


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _train_args(sets: list[str], out: Path, resume: bool) -> list[str]:
    if resume:
        return ["train", "--resume", "--output-dir", str(out)]
    return ["train", *[x for s in sets for x in ("--set", s)], "--output-dir", str(out)]


def accelerate_launch(sets, out: Path, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
            "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", _port(),
            "-m", "sentiment_lora.cli", *_train_args(sets, out, resume)]


def torchrun(sets, out: Path, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", _port(), "-m", "sentiment_lora.cli", *_train_args(sets, out, resume)]


def single(sets, out: Path, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "sentiment_lora.cli", *_train_args(sets, out, resume)]


def _run(cmd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads per process in every run
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr, done.stderr[-3000:]  # a worker exited with its group open
    return done


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (children first seen, then theirs)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_and_two(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    sets = _sets(tiny_model_dir, tiny_data_dir, "lora.dropout=0")  # dropout masks differ per process
    _run(single(sets + ONE, root / "one"))
    two = _run(accelerate_launch(sets + TWO, root / "two"))
    return root / "one", root / "two", two


def test_two_processes_train_what_one_does(one_and_two):
    one, two, _ = one_and_two
    a, b = _log(one), _log(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 13))
    # The same reviews per step and the same mean gradient; only the order of float sums
    # differs (micro-batches of 2 instead of 4, and the gradients' all-reduce), so losses and
    # weights agree to float32 rounding, accumulated over 12 Adam steps.
    for x, y in zip(a, b):
        if x.get("loss") is not None:
            assert abs(x["loss"] - y["loss"]) <= 1e-4 * max(1.0, abs(x["loss"])), (x, y)
    wa, wb = _adapter(one), _adapter(two)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    scale = max(float(wa[k].abs().max()) for k in wa)
    print(f"largest adapter difference {worst:.2e} (largest weight {scale:.2e})")
    assert worst <= 1e-5, worst


def test_validation_and_test_are_scored_once_each_and_gathered(one_and_two):
    one, two, _ = one_and_two
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert ma["n"] == mb["n"] == 15 and ma["calibration"]["validation"]["n"] == mb["calibration"]["validation"]["n"]
    pa, pb = _predictions(one), _predictions(two)
    assert [r["id"] for r in pa] == [r["id"] for r in pb] and len({r["id"] for r in pb}) == 15
    assert max(abs(x - y) for ra, rb in zip(pa, pb) for x, y in zip(ra["probs"], rb["probs"])) <= 1e-4
    assert ma["calibration"]["validation"]["accuracy"] == mb["calibration"]["validation"]["accuracy"]


def test_files_and_lines_are_written_once(one_and_two):
    _, two, done = one_and_two
    out = done.stdout
    for start in ("data:", "model:", "LoRA:", "accuracy ", "calibrated on"):
        assert sum(line.startswith(start) for line in out.splitlines()) == 1, (start, out)
    names = sorted(p.name for p in two.iterdir())
    assert names == sorted(p.name for p in one_and_two[0].iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temporary file of a second writer


@pytest.mark.slow
def test_resume_under_two_processes_after_kill_9(tiny_model_dir, tiny_data_dir, tmp_path):
    sets = _sets(tiny_model_dir, tiny_data_dir, "lora.dropout=0.1", "train.save_steps=2", "eval.verify_samples=0",
                 "train.epochs=6", *TWO)
    _run(torchrun(sets, tmp_path / "whole"))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(torchrun(sets, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = out / "checkpoints" / "last.pt"
    end = time.monotonic() + 300
    while True:
        assert proc.poll() is None and time.monotonic() < end, "the run ended or stalled before step 4"
        try:
            if last.is_file() and torch.load(last, weights_only=True)["step"] >= 4:
                break
        except Exception:  # being replaced this instant
            pass
        time.sleep(0.01)
    # The launcher and both workers at once (torchrun starts each worker in a session of its own).
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    assert not (out / "classifier.json").exists(), "the run finished before it was killed"
    from sentiment_lora.checkpoint import load_checkpoint

    state, _ = load_checkpoint(out, warn=lambda m: None)  # last.pt may be mid-rename: as --resume reads it
    assert len(state["rng_states"]) == 2  # each process's generators
    assert not torch.equal(state["rng_states"][0]["torch"], state["rng_states"][1]["torch"])
    _run(torchrun(sets, out, resume=True))
    wa, wb = _adapter(tmp_path / "whole"), _adapter(out)
    # Each process's dropout generator restored, the data order replayed: the same adapter.
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) == 0.0
