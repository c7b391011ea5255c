"""Training checkpoints, and what state a training run folder is in.

This module is the one owner of ``checkpoints/*.pt``. A checkpoint holds only tensors and
plain values, and is read with ``torch.load(weights_only=True)``: opening a run folder never
unpickles code. The previous checkpoint is kept beside the last one, so a checkpoint torn
by a crash or a full disk costs one save interval, not the run.

A run folder is in one of these states, and each tells the user what to run next:

- ``new``: missing or empty; a fresh run starts there.
- ``finished``: ``classifier.json`` is there (it is written last).
- ``resumable``: a checkpoint is there; ``train --resume`` continues from it.
- ``restartable``: only files of a run that stopped before its first checkpoint
  (``config.yaml``, a log, ...); a fresh run, or ``--resume``, starts it over.
- ``foreign``: it holds files a run does not write; nothing touches it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import UserError
from .storage import write_with

FOLDER = "checkpoints"
LAST = "last.pt"
PREVIOUS = "previous.pt"
# Everything a training run writes into its folder; anything else makes the folder foreign.
RUN_FILES = {"config.yaml", "train_log.jsonl", "metrics.json", "predictions.jsonl", "training_curves.png",
             "confusion_matrix.png", "calibration.png", "adapter", FOLDER, "classifier.json", "evaluations",
             "report.html", "logs"}
_KEYS = {"adapter": dict, "optimizer": dict, "scheduler": dict, "step": int, "log": list}


def _ours(name: str) -> bool:
    # Leftovers of atomic writes killed midway: .NAME.XXXX.tmp and write_dir's .NAME.old.
    return name in RUN_FILES or (name.startswith(".") and name.endswith((".tmp", ".old")))


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint files present, newest first."""
    folder = Path(run_dir) / FOLDER
    return [p for p in (folder / LAST, folder / PREVIOUS) if p.is_file()]


def folder_state(run_dir: str | Path) -> str:
    """new, finished, resumable, restartable or foreign (see the module docstring); ``file``
    when the path is not a folder."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "new"
    if not run_dir.is_dir():
        return "file"
    names = [p.name for p in run_dir.iterdir()]
    if not names:
        return "new"
    if "classifier.json" in names:
        return "finished"
    if not all(_ours(n) for n in names):
        return "foreign"
    return "resumable" if checkpoints(run_dir) else "restartable"


def plan_run(run_dir: str | Path, resume: bool) -> str:
    """Check the run folder before any heavy work; return ``fresh``, ``restart`` (clear the
    folder's leftovers and start from step 0) or ``resume``. Anything else is a UserError
    that says which command to run instead."""
    run_dir = Path(run_dir)
    state = folder_state(run_dir)
    where = str(run_dir)
    resume_cmd = f"'sentiment-lora train --resume --output-dir {where}'"
    if state == "file":
        raise UserError(f"--output-dir {where!r} is a file, not a folder; choose a folder path")
    if state == "finished":
        raise UserError(f"{where!r} holds a finished classifier{'; there is nothing to resume' if resume else ''}; "
                        f"choose another --output-dir")
    if state == "foreign":
        extra = sorted(p.name for p in run_dir.iterdir() if not _ours(p.name))
        raise UserError(f"--output-dir {where!r} holds files that are not a training run's (e.g. {extra[0]!r}); "
                        f"choose another --output-dir")
    if resume:
        if state == "new":
            raise UserError(f"--resume: {where!r} holds no interrupted run; start one with "
                            f"'sentiment-lora train --output-dir {where}'")
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume: {where!r} has no config.yaml, so the run cannot be continued; delete the "
                            f"folder and start a new run")
        return "resume" if state == "resumable" else "restart"
    if state == "resumable":
        raise UserError(f"{where!r} holds an interrupted run with a checkpoint; continue it with {resume_cmd}, or "
                        f"delete the folder to start over")
    return "restart" if state == "restartable" else "fresh"


def clear_run(run_dir: str | Path) -> None:
    """Remove what a run that stopped before its first checkpoint left (``restartable`` only)."""
    run_dir = Path(run_dir)
    if folder_state(run_dir) != "restartable":
        raise AssertionError(f"refusing to clear {run_dir}: not an unfinished run folder")
    for p in run_dir.iterdir():
        if _ours(p.name) and p.name != "config.yaml":
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def save_checkpoint(run_dir: str | Path, state: dict) -> Path:
    """Write the last checkpoint atomically; the one before it becomes ``previous.pt``."""
    import os

    import torch

    folder = Path(run_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / LAST).is_file():
        os.replace(folder / LAST, folder / PREVIOUS)
    return write_with(folder / LAST, lambda tmp: torch.save(state, tmp))


def _read(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a torn or foreign file
        raise ValueError(str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__) from None
    if not isinstance(state, dict):
        raise ValueError("not a checkpoint")
    for key, kind in _KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise ValueError(f"its {key!r} is missing or malformed")
    if state["step"] < 1:
        raise ValueError(f"step {state['step']} is not a step")
    if not all(isinstance(v, torch.Tensor) for v in state["adapter"].values()) or not state["adapter"]:
        raise ValueError("its adapter weights are malformed")
    if not isinstance(state.get("rng"), torch.Tensor) or state["rng"].dtype != torch.uint8:
        raise ValueError("its random-number state is malformed")
    return state


def load_checkpoint(run_dir: str | Path, warn=print) -> tuple[dict, Path]:
    """The newest readable checkpoint and its path; a damaged last one falls back to the
    previous one with a warning. Raises UserError when none can be read."""
    found = checkpoints(run_dir)
    problems = []
    for path in found:
        try:
            state = _read(path)
        except (ValueError, OSError) as exc:
            problems.append(f"{path} is damaged ({exc})")
            continue
        if problems:
            warn(f"warning: {problems[0]}; resuming from the checkpoint before it, {path.name} (step {state['step']})")
        return state, path
    raise UserError(f"{'; '.join(problems) or 'no checkpoint found'}; delete {Path(run_dir) / FOLDER} and run "
                    f"'sentiment-lora train --resume --output-dir {run_dir}' to start over from step 0")


def damaged(path: Path, run_dir: str | Path, why: str) -> UserError:
    """A checkpoint that reads but does not fit the model or optimizer of this run."""
    return UserError(f"{path} does not fit this run ({why}); it is damaged or from another config: delete it and "
                     f"run 'sentiment-lora train --resume --output-dir {run_dir}' to continue from the checkpoint "
                     f"before it, or from step 0")


def run_config(run_dir: str | Path, overrides=()):
    """The config an interrupted run was started with (``--set`` may still adjust it)."""
    from .config import load_config

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"--resume: {path} not found; give the --output-dir of an interrupted run")
    return load_config(path, overrides)
