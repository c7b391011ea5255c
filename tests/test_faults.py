"""Faults during training, each on the tiny model: kill -9 at a random step, a stop signal
mid-run, a checkpoint with a wrong byte, a full disk while saving, a run folder of an older
version. The run always recovers exactly, or says in one line what to do."""

from __future__ import annotations

import json
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sentiment_lora.checkpoint import load_checkpoint
from sentiment_lora.layout import CHECKPOINT_MANIFEST as MANIFEST

SEED = 13


def _sets(model: Path, data: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model}", f"data.dataset={data}", "model.device=cpu", "data.train_size=48",
            "data.val_size=8", "data.test_size=16", "prompt.max_length=40", "train.epochs=3", "train.batch_size=2",
            "train.grad_accum=2", "train.lr=5e-3", "train.save_steps=1", "train.logging_steps=1",
            "eval.batch_size=8", "eval.verify_samples=0", "lora.dropout=0.1", *extra]


def _train_cmd(sets: list[str], out: Path, resume: bool = False) -> list[str]:
    if resume:
        return [sys.executable, "-m", "sentiment_lora.cli", "train", "--resume", "--output-dir", str(out)]
    return [sys.executable, "-m", "sentiment_lora.cli", "train", *[x for s in sets for x in ("--set", s)],
            "--output-dir", str(out)]


def _as_a_terminal_starts_it():
    # Background jobs inherit SIGINT ignored (CI runners); a user's terminal does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # A write past RLIMIT_FSIZE then fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _start(cmd) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_a_terminal_starts_it)


def _wait_for(condition, proc, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended first (rc {proc.returncode}): {proc.stderr.read()[-800:]}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def _step_of(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    """The reference: the same run, never stopped."""
    out = tmp_path_factory.mktemp("faults") / "whole"
    done = subprocess.run(_train_cmd(_sets(tiny_model_dir, tiny_data_dir), out), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def _same_adapter(a: Path, b: Path) -> float:
    x, y = _adapter(a), _adapter(b)
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.mark.slow
def test_kill_9_at_random_steps_then_resume_gives_the_uninterrupted_adapter(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                          uninterrupted):
    rng = random.Random(SEED)
    out = tmp_path / "run"
    sets = _sets(tiny_model_dir, tiny_data_dir)
    log = json.loads((uninterrupted / "train_log.jsonl").read_text().splitlines()[-1])
    total = log["step"]
    killed_at = []
    cmd = _train_cmd(sets, out)
    last = out / "checkpoints" / "last.pt"
    # Kill it twice, at random optimizer steps, the second after the resumed run has gone on.
    first = rng.randint(2, total // 2)
    for target in (first, rng.randint(first + 3, total - 2)):
        proc = _start(cmd)
        _wait_for(lambda target=target: last.is_file() and _safe_step(last) >= target, proc)
        time.sleep(rng.uniform(0, 0.05))  # anywhere in the next step, a save included
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        state, _ = load_checkpoint(out, warn=lambda m: None)
        killed_at.append(state["step"])
        cmd = _train_cmd(sets, out, resume=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert 2 <= killed_at[0] < killed_at[1] < total, killed_at
    # Same seed, same data order, and every generator, optimizer and scheduler state restored:
    # the adapter is bit-for-bit the uninterrupted run's.
    assert _same_adapter(out, uninterrupted) == 0.0, killed_at


def _safe_step(path: Path) -> int:
    try:
        return _step_of(path)
    except Exception:  # being replaced right now
        return -1


def _size(path: Path) -> int:
    """A checkpoint's size, 0 while the trainer's rotation has it renamed away."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_the_step_under_way(sig, tiny_model_dir, tiny_data_dir, tmp_path, uninterrupted):
    out = tmp_path / "run"
    sets = _sets(tiny_model_dir, tiny_data_dir, "train.save_steps=0")  # no periodic checkpoint at all
    proc = _start(_train_cmd(sets, out))
    logged = out / "train_log.jsonl"
    _wait_for(lambda: logged.is_file() and len(logged.read_text().splitlines()) >= 3, proc)
    proc.send_signal(sig)
    said, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1] == (f"interrupted: {out} holds a checkpoint; continue with 'sentiment-lora train --resume "
                         f"--output-dir {out}'"), lines[-1]
    assert f"stopping after this step ({signal.Signals(sig).name})" in said and "Traceback" not in err
    step = _step_of(out / "checkpoints" / "last.pt")
    assert step >= 3
    done = subprocess.run(_train_cmd(sets, out, resume=True), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed from optimizer step {step}" in done.stdout
    assert _same_adapter(out, uninterrupted) == 0.0


def test_a_wrong_byte_in_a_checkpoint_is_caught_and_the_previous_one_used(tiny_config, tmp_path, interrupted_run,
                                                                         capsys):
    import sentiment_lora.train as train_mod
    from sentiment_lora.checkpoint import read_checkpoint

    cfg = tiny_config("train.save_steps=1", "train.epochs=1", "eval.verify_samples=0")
    out = tmp_path / "run"
    interrupted_run(cfg, out)
    last = out / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    adapter = next(iter(torch.load(last, weights_only=True)["adapter"].values()))
    at = bytes(data).find(adapter.numpy().tobytes()[:16])
    assert at > 0
    data[at + 1] ^= 0x40  # one bit of one weight: same size, still a valid zip
    last.write_bytes(bytes(data))
    # torch alone loads it, silently wrong: only the manifest can tell.
    assert not torch.equal(next(iter(read_checkpoint(last)["adapter"].values())), adapter)
    capsys.readouterr()
    metrics = train_mod.run(cfg, out, resume=True)
    said = capsys.readouterr()
    err = said.out + said.err
    assert "last.pt is damaged (its sha256 is not the one recorded in manifest.json" in err
    assert "resuming from the checkpoint before it, previous.pt" in err
    assert metrics["train"]["optimizer_steps"] == 6


def test_a_full_disk_while_saving_leaves_the_checkpoints_intact(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                 uninterrupted):
    out = tmp_path / "run"
    sets = _sets(tiny_model_dir, tiny_data_dir)
    proc = _start(_train_cmd(sets, out))
    folder = out / "checkpoints"
    _wait_for(lambda: (folder / "previous.pt").is_file() and _safe_step(folder / "last.pt") >= 2
              and _size(folder / "last.pt") > 0, proc)
    # From now on no file of this process may grow past a few hundred bytes less than a checkpoint.
    limit = max(_size(folder / "last.pt"), _size(folder / "previous.pt")) - 512
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith(f"error: could not save a checkpoint in {folder} (File too large); the checkpoints "
                                f"already there are intact"), lines[-1]
    assert "Traceback" not in err
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")], "a half-written file was left"
    state, path = load_checkpoint(out, warn=pytest.fail)  # both verify against the manifest
    assert path.name == "last.pt" and state["step"] >= 2
    done = subprocess.run(_train_cmd(sets, out, resume=True), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _same_adapter(out, uninterrupted) == 0.0


def test_a_run_folder_of_an_older_version_resumes(tiny_config, tmp_path, interrupted_run):
    """A checkpoint without the manifest and with torch's CPU generator state alone, as
    version 2 of the checkpoint format wrote, resumes (its first save then adds a manifest)."""
    import sentiment_lora.train as train_mod

    cfg = tiny_config("train.save_steps=1", "train.epochs=1", "eval.verify_samples=0")
    out = tmp_path / "run"
    interrupted_run(cfg, out)
    folder = out / "checkpoints"
    (folder / MANIFEST).unlink()
    for name in ("last.pt", "previous.pt"):
        state = torch.load(folder / name, weights_only=True)
        state.pop("rng_states")
        torch.save(state, folder / name)
    metrics = train_mod.run(cfg, out, resume=True)
    assert metrics["train"]["optimizer_steps"] == 6
