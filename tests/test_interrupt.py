"""Ctrl-C (SIGINT) and SIGTERM sent to ``train`` at random moments, including before the first
checkpoint: the folder is always resumable or re-runnable, as the message says, and following
the message finishes the run."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentiment_lora.checkpoint import folder_state

RANDOM_TRIALS = 5
SEED = 9


def _command(model: Path, data: Path, out: Path) -> list[str]:
    sets = [f"model.name_or_path={model}", f"data.dataset={data}", "model.device=cpu", "data.train_size=48",
            "data.val_size=0", "data.test_size=24", "prompt.max_length=40", "train.epochs=4", "train.batch_size=1",
            "train.grad_accum=1", "train.lr=5e-3", "train.save_steps=50", "train.logging_steps=5",
            "eval.batch_size=8", "eval.verify_samples=4"]
    return [sys.executable, "-m", "sentiment_lora.cli", "train", *[x for s in sets for x in ("--set", s)],
            "--output-dir", str(out)]


def _terminal_sigint():
    # A shell without job control starts background jobs with SIGINT ignored, and a child
    # inherits that (CI runners, `make test &`); Python then installs no Ctrl-C handler, rightly.
    # The run is started as a terminal would start it, so Ctrl-C means what it means there.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_terminal_sigint)


def _wait_for(path: Path, proc, timeout: float = 120) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.005)
    return False


def _interrupt_and_recover(cmd, out: Path, sig: int, when) -> str:
    """Start a run, signal it at ``when`` (seconds, or a path to wait for), follow its advice.
    Returns the folder state the signal left."""
    proc = _start(cmd)
    if isinstance(when, tuple):  # (file, seconds): that long after the file appears
        _wait_for(when[0], proc)
        time.sleep(when[1])
    else:
        time.sleep(when)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    state = folder_state(out)
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err or proc.returncode < 0, err
    if proc.returncode == 0:
        assert state == "finished"
        return "finished before the signal"
    if proc.returncode < 0:  # killed before Python's handlers were in place, or after they were gone
        assert state in ("new", "finished"), (proc.returncode, state, err)
        return f"killed outside the run ({state})"
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), (proc.returncode, err)
    assert lines and lines[-1].startswith("interrupted"), err
    assert state in ("new", "restartable", "resumable", "finished"), state
    if state == "resumable":
        assert f"--resume --output-dir {out}" in lines[-1], lines[-1]
        follow = [*cmd[:cmd.index("train") + 1], "--resume", "--output-dir", str(out)]
    elif state in ("restartable", "new"):
        assert "run the same command again" in lines[-1], lines[-1]
        follow = cmd
    else:
        return state
    done = subprocess.run(follow, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert folder_state(out) == "finished" and not (out / "checkpoints").exists()
    return state


@pytest.mark.slow
def test_interrupts_leave_a_usable_folder(tiny_model_dir, tiny_data_dir, tmp_path):
    # A clean run first: it measures how long a run takes, and how long after its config.yaml
    # appears (training, scoring, saving), so the random moments span both.
    clean_out = tmp_path / "clean"
    started = time.monotonic()
    proc = _start(_command(tiny_model_dir, tiny_data_dir, clean_out))
    _wait_for(clean_out / "config.yaml", proc)
    configured = time.monotonic()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    duration, working = time.monotonic() - started, time.monotonic() - configured

    rng = random.Random(SEED)
    trials = [("before the first checkpoint", signal.SIGINT, ("config.yaml", 0.0)),
              ("right after a checkpoint", signal.SIGTERM, ("checkpoints/last.pt", 0.0))]
    for i in range(RANDOM_TRIALS):
        sig = rng.choice([signal.SIGINT, signal.SIGTERM])
        if i % 2:
            t = rng.uniform(0.0, working)
            trials.append((f"{t:.2f} s after config.yaml", sig, ("config.yaml", t)))
        else:
            t = rng.uniform(0.3, duration)
            trials.append((f"{t:.2f} s after the start", sig, t))
    outcomes = []
    for i, (label, sig, when) in enumerate(trials):
        out = tmp_path / f"run{i}"
        moment = (out / when[0], when[1]) if isinstance(when, tuple) else when
        state = _interrupt_and_recover(_command(tiny_model_dir, tiny_data_dir, out), out, sig, moment)
        outcomes.append(f"{signal.Signals(sig).name} {label}: {state}")
    print("\n".join(outcomes))
    assert outcomes[0].endswith("restartable") and outcomes[1].endswith("resumable"), outcomes


@pytest.mark.parametrize("damage", ["last", "both"])
def test_a_damaged_checkpoint(damage, tiny_config, tmp_path, interrupted_run):
    """A torn last checkpoint falls back to the one before it; with both torn, one line says
    how to start over, and doing so works."""
    import sentiment_lora.train as train_mod
    from sentiment_lora.errors import UserError

    cfg = tiny_config("train.save_steps=1", "train.epochs=1", "eval.verify_samples=0")
    out = tmp_path / "run"
    interrupted_run(cfg, out)
    ckpt = out / "checkpoints"
    assert (ckpt / "last.pt").is_file() and (ckpt / "previous.pt").is_file()
    for name in (["last.pt"] if damage == "last" else ["last.pt", "previous.pt"]):
        data = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(data[: len(data) // 2])
    if damage == "last":
        metrics = train_mod.run(cfg, out, resume=True)
        assert metrics["train"]["optimizer_steps"] == 6
        return
    with pytest.raises(UserError) as info:
        train_mod.run(cfg, out, resume=True)
    message = str(info.value)
    assert "last.pt is damaged" in message and "previous.pt is damaged" in message and "\n" not in message
    import shutil

    shutil.rmtree(ckpt)  # as the message says; --resume then starts over from step 0
    assert train_mod.run(cfg, out, resume=True)["train"]["optimizer_steps"] == 6


def test_non_finite_weights_stop_the_run(tiny_config, tmp_path, monkeypatch):
    import torch

    import sentiment_lora.train as train_mod
    from sentiment_lora.errors import UserError

    real_step = torch.optim.AdamW.step

    def poisoned(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    with pytest.raises(UserError, match="no longer finite"):
        train_mod.run(tiny_config("train.epochs=1"), tmp_path / "run")
    assert not (tmp_path / "run" / "classifier.json").exists()
    assert folder_state(tmp_path / "run") == "restartable"


def test_a_stop_signal_turned_into_an_import_error_is_an_interrupt(tiny_data_dir, tmp_path, monkeypatch, capsys):
    """transformers' lazy imports raise ModuleNotFoundError from a Ctrl-C or SIGTERM that lands
    inside them; train still says 'interrupted' and exits as the signal asks, not 'internal error'."""
    import sentiment_lora.train as train_mod
    from sentiment_lora.cli import main
    from sentiment_lora.errors import Interrupted
    from sentiment_lora.signals import interrupt_in

    def lazy_import_stopped(*args, **kwargs):
        try:
            raise Interrupted(signal.SIGTERM)
        except KeyboardInterrupt as exc:
            raise ModuleNotFoundError("Could not import module 'get_scheduler'") from exc

    assert interrupt_in(ValueError("a bug")) is None
    monkeypatch.setattr(train_mod, "run", lazy_import_stopped)
    code = main(["train", "--set", f"data.dataset={tiny_data_dir}", "--output-dir", str(tmp_path / "run")])
    assert code == 143
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("verb", ["train", "baseline"])
def test_a_stop_signal_a_library_swallowed_is_still_an_interrupt(verb, sig, tiny_data_dir, tmp_path, monkeypatch,
                                                                 capsys, request):
    """pybind11 clears the exception that a signal handler raised inside its argument conversion
    and raises a TypeError with no cause: the command still says 'interrupted' and exits as the
    signal asks, not with 'internal error'; the next command starts with no signal on record.
    The same error is a traceback under --debug."""
    import os

    import sentiment_lora.baseline as baseline_mod
    import sentiment_lora.train as train_mod
    from sentiment_lora.cli import main
    from sentiment_lora.signals import interrupt_in

    def swallowed(*args, **kwargs):
        try:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler runs here
        except KeyboardInterrupt:
            pass  # what pybind11 does with it
        raise TypeError("m(): incompatible function arguments. The following argument types are supported:")

    monkeypatch.setattr(train_mod if verb == "train" else baseline_mod, "run" if verb == "train" else "run_tfidf",
                        swallowed)
    # Ctrl-C live, as a terminal starts a command: a worker started in the background ignores it,
    # and an ignored signal rightly stays ignored (see _terminal_sigint).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    argv = {"train": ["train", "--set", f"data.dataset={tiny_data_dir}", "--output-dir", str(tmp_path / "run")],
            "baseline": ["baseline", "tfidf", "--dataset", str(tiny_data_dir), "--output-dir", str(tmp_path / "b")]}
    assert main(argv[verb]) == 128 + sig
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted")
    assert interrupt_in(TypeError("a bug")) is None
    with pytest.raises(TypeError):  # --debug shows it: an error met while stopping can be a bug of its own
        main(["--debug", *argv[verb]])
