"""Training checkpoints (this module alone owns ``checkpoints/*.pt``), and a run folder's state.

A checkpoint holds only tensors and plain values, read with ``torch.load(weights_only=True)``,
so opening a run folder never unpickles code. The previous one is kept beside the last, so a
checkpoint torn by a crash or a full disk costs one save interval, not the run.

A run folder's state says what to run next:

- ``new``: missing or empty; a fresh run starts there.
- ``finished``: ``classifier.json`` is there (it is written last).
- ``resumable``: a checkpoint is there; ``train --resume`` continues from it.
- ``restartable``: stopped before its first checkpoint, and provably ``train``'s: its
  ``config.yaml`` as ``Config.save`` wrote it, results only beside the training log, nothing
  else; a fresh run, or ``--resume``, starts it over.
- ``foreign``: anything else not empty (another verb's output, a user's files); never touched.
"""

from __future__ import annotations

import shutil
from enum import Enum
from pathlib import Path

from .errors import UserError
from .integrity import sha256_bytes, sha256_file
from .layout import CHECKPOINT_MANIFEST, CHECKPOINTS, CONFIG, LAST, PREVIOUS, RESULT_FILES, RUN_FILES, SPEC, TRAIN_LOG
from .storage import read_json, write_json


class FolderState(str, Enum):
    """What a run folder holds, and so what ``train`` may do with it (see the module docstring)."""

    NEW = "new"
    FINISHED = "finished"
    RESUMABLE = "resumable"
    RESTARTABLE = "restartable"
    FOREIGN = "foreign"
    FILE = "file"

    def __str__(self) -> str:
        return self.value


class Plan(str, Enum):
    """What ``train`` does in its folder: start in a new one, clear an early-stopped run of its
    own and start over, or continue from a checkpoint."""

    FRESH = "fresh"
    RESTART = "restart"
    RESUME = "resume"

    def __str__(self) -> str:
        return self.value


CHECKPOINT_FORMAT = "sentiment-lora-checkpoint/2"
_KEYS = {"adapter": dict, "optimizer": dict, "scheduler": dict, "step": int, "log": list}


def _ours(name: str) -> bool:
    """A run's own file, or the leftover of one of its atomic writes killed midway
    (``.NAME.XXXX.tmp``, or write_dir's ``.NAME.XXXX.old``), NAME being a run file."""
    if name in RUN_FILES:
        return True
    return name.startswith(".") and name.endswith((".tmp", ".old")) and name[1:].split(".")[0] in _STEMS


_STEMS = {n.split(".")[0] for n in RUN_FILES}


def foreign_reason(run_dir: Path, names: list[str]) -> str | None:
    """Why a folder without a checkpoint or classifier is not provably a run ``train`` made; None
    when it is one (see the module docstring)."""
    from .config import is_saved_config

    extra = sorted(n for n in names if not _ours(n))
    if extra:
        return f"holds files that are not a training run's (e.g. {extra[0]!r})"
    if CONFIG not in names:
        return "holds no config.yaml of a training run, so it is not one train made"
    if not is_saved_config(run_dir / CONFIG):
        return "holds a config.yaml that train did not write or that was changed since"
    results = sorted(RESULT_FILES & set(names))
    if results and TRAIN_LOG not in names:
        return f"holds results ({results[0]!r}) but no training log, so another command wrote them"
    return None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint files present, newest first."""
    folder = Path(run_dir) / CHECKPOINTS
    return [p for p in (folder / LAST, folder / PREVIOUS) if p.is_file()]


def folder_state(run_dir: str | Path) -> FolderState:
    """new, finished, resumable, restartable or foreign (see the module docstring); ``file``
    when the path is not a folder."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return FolderState.NEW
    if not run_dir.is_dir():
        return FolderState.FILE
    names = [p.name for p in run_dir.iterdir()]
    if not names:
        return FolderState.NEW
    if SPEC in names:
        return FolderState.FINISHED
    if not all(_ours(n) for n in names):
        return FolderState.FOREIGN
    if checkpoints(run_dir):
        return FolderState.RESUMABLE
    return FolderState.FOREIGN if foreign_reason(run_dir, names) else FolderState.RESTARTABLE


def plan_run(run_dir: str | Path, resume: bool) -> Plan:
    """Check the run folder before any heavy work and return the Plan; anything else is a
    UserError that says which command to run instead."""
    run_dir = Path(run_dir)
    state = folder_state(run_dir)
    where = str(run_dir)
    resume_cmd = f"'sentiment-lora train --resume --output-dir {where}'"
    if state is FolderState.FILE:
        raise UserError(f"--output-dir {where!r} is a file, not a folder; choose a folder path")
    if state is FolderState.FINISHED:
        raise UserError(f"{where!r} holds a finished classifier{'; there is nothing to resume' if resume else ''}; "
                        f"choose another --output-dir")
    if state is FolderState.FOREIGN:
        why = foreign_reason(run_dir, [p.name for p in run_dir.iterdir()])
        raise UserError(f"--output-dir {where!r} {why}; nothing there was touched: choose another --output-dir")
    if resume:
        if state is FolderState.NEW:
            raise UserError(f"--resume: {where!r} holds no interrupted run; start one with "
                            f"'sentiment-lora train --output-dir {where}'")
        if not (run_dir / CONFIG).is_file():
            raise UserError(f"--resume: {where!r} has no config.yaml, so the run cannot be continued; delete the "
                            f"folder and start a new run")
        return Plan.RESUME if state is FolderState.RESUMABLE else Plan.RESTART
    if state is FolderState.RESUMABLE:
        raise UserError(f"{where!r} holds an interrupted run with a checkpoint; continue it with {resume_cmd}, or "
                        f"delete the folder to start over")
    return Plan.RESTART if state is FolderState.RESTARTABLE else Plan.FRESH


def clear_run(run_dir: str | Path) -> None:
    """Remove what a run that stopped before its first checkpoint left (``restartable`` only)."""
    run_dir = Path(run_dir)
    if folder_state(run_dir) is not FolderState.RESTARTABLE:
        raise AssertionError(f"refusing to clear {run_dir}: not an unfinished run folder")
    for p in run_dir.iterdir():
        if _ours(p.name) and p.name != CONFIG:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def rng_state() -> dict:
    """Every random-number generator a training step may draw from: Python's, NumPy's, torch's
    CPU one and each visible CUDA device's (dropout draws from the device's own)."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, extra = random.getstate()
    return {"python": [version, list(internal), extra], "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(saved: dict) -> None:
    """Restore what ``rng_state`` returned. CUDA states are restored when as many devices are
    visible as were saved; otherwise the CUDA generators keep their seeded state."""
    import random

    import numpy as np
    import torch

    version, internal, extra = saved["python"]
    random.setstate((version, tuple(internal), extra))
    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == len(saved["cuda"]):
        torch.cuda.set_rng_state_all(saved["cuda"])


def remove_checkpoints(run_dir: str | Path) -> None:
    """A finished run needs no checkpoints: remove them, their manifest and the folder."""
    folder = Path(run_dir) / CHECKPOINTS
    leftovers = list(folder.glob(f".{LAST}.*.tmp")) if folder.is_dir() else []  # saves killed midway
    for path in [*checkpoints(run_dir), folder / CHECKPOINT_MANIFEST, *leftovers]:
        path.unlink(missing_ok=True)
    if folder.exists() and not any(folder.iterdir()):
        folder.rmdir()


def save_checkpoint(run_dir: str | Path, state: dict) -> Path:
    """Write a new last checkpoint; the one before it becomes ``previous.pt``. It is written and
    hashed under a temporary name, recorded in the manifest, then moved in place, so a failure
    at any point leaves both earlier checkpoints readable; a failed write is one UserError."""
    import io
    import os
    import tempfile

    import torch

    folder = Path(run_dir) / CHECKPOINTS
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{LAST}.", suffix=".tmp", dir=folder)
        os.close(fd)
        tmp = Path(name)
        try:
            # Serialized in memory and written by Python: torch's file writer turns a full disk
            # into an opaque RuntimeError, Python into an OSError that names the cause.
            buffer = io.BytesIO()
            torch.save(state, buffer)
            data = buffer.getbuffer()
            tmp.write_bytes(data)
            entry = {"sha256": sha256_bytes(data), "size": len(data), "step": int(state["step"])}
            # Kept: the new entry and those of the two files beside it until the renames (a kill
            # between them must orphan neither).
            earlier = _manifest(folder)
            if earlier is None:  # a run folder of an older version: record what is there now
                earlier = [{"sha256": sha256_file(p), "size": p.stat().st_size, "step": None}
                           for p in checkpoints(run_dir)]
            kept = [entry] + [e for e in earlier if e["sha256"] != entry["sha256"]][:2]
            write_json(folder / CHECKPOINT_MANIFEST, {"format": CHECKPOINT_FORMAT, "checkpoints": kept})
            if (folder / LAST).is_file():
                try:
                    _check_manifest(folder / LAST, earlier)
                    os.replace(folder / LAST, folder / PREVIOUS)
                except ValueError:  # the damaged last one a resume fell back from: keep the good previous
                    (folder / LAST).unlink()
            os.replace(tmp, folder / LAST)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"could not save a checkpoint in {folder} ({exc.strerror or exc}); the checkpoints "
                        f"already there are intact: free disk space (or raise the file-size limit) and run "
                        f"'sentiment-lora train --resume --output-dir {run_dir}'") from None
    return folder / LAST


def _manifest(folder: Path) -> list[dict] | None:
    """The manifest's entries; None when there is none (a run of an older version) or it is unreadable."""
    try:
        entries = read_json(folder / CHECKPOINT_MANIFEST)["checkpoints"]
        valid = all(isinstance(e["sha256"], str) and isinstance(e["size"], int) for e in entries)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entries if valid else None


def _check_manifest(path: Path, entries: list[dict] | None) -> None:
    """A checkpoint whose size and sha256 are not the ones recorded when it was written is
    damaged: a wrong byte in a tensor would otherwise load as wrong weights."""
    if entries is None:
        return
    size = path.stat().st_size
    if not any(e["size"] == size for e in entries):
        raise ValueError(f"its size, {size} bytes, is not the one recorded in {CHECKPOINT_MANIFEST}: it is "
                         f"truncated or was changed")
    if not any(e["sha256"] == sha256_file(path) for e in entries):  # not memoized: damage may keep size and time
        raise ValueError(f"its sha256 is not the one recorded in {CHECKPOINT_MANIFEST}: it was changed after it was "
                         f"written")


def read_checkpoint(path: Path) -> dict:
    """A checkpoint file's state, checked for shape; ValueError says what is wrong with it."""
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
    rngs = state.get("rng_states")
    if rngs is not None and not (isinstance(rngs, list) and all(
            isinstance(r, dict) and {"python", "numpy", "torch", "cuda"} <= set(r) for r in rngs)):
        raise ValueError("its random-number states are malformed")
    return state


def load_checkpoint(run_dir: str | Path, warn=print) -> tuple[dict, Path]:
    """The newest readable checkpoint and its path; a damaged last one falls back to the
    previous one with a warning. Raises UserError when none can be read."""
    found = checkpoints(run_dir)
    folder = Path(run_dir) / CHECKPOINTS
    entries = _manifest(folder)
    if entries is None and (folder / CHECKPOINT_MANIFEST).exists():
        warn(f"warning: {folder / CHECKPOINT_MANIFEST} cannot be read; the checkpoints are checked by their content "
             f"only")
    problems = []
    for path in found:
        try:
            _check_manifest(path, entries)
            state = read_checkpoint(path)
        except (ValueError, OSError) as exc:
            problems.append(f"{path} is damaged ({exc})")
            continue
        if problems:
            warn(f"warning: {problems[0]}; resuming from the checkpoint before it, {path.name} (step {state['step']})")
        return state, path
    raise UserError(f"{'; '.join(problems) or 'no checkpoint found'}; delete {Path(run_dir) / CHECKPOINTS} and run "
                    f"'sentiment-lora train --resume --output-dir {run_dir}' to start over from step 0")


def damaged(path: Path, run_dir: str | Path, why: str) -> UserError:
    """A checkpoint that reads but does not fit the model or optimizer of this run."""
    return UserError(f"{path} does not fit this run ({why}); it is damaged or from another config: delete it and "
                     f"run 'sentiment-lora train --resume --output-dir {run_dir}' to continue from the checkpoint "
                     f"before it, or from step 0")


def run_config(run_dir: str | Path, overrides=()):
    """The config an interrupted run was started with (``--set`` may still adjust it)."""
    from .config import load_config

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"--resume: {path} not found; give the --output-dir of an interrupted run")
    cfg = load_config(path, overrides)
    dataset = Path(cfg.data.dataset).expanduser()
    # config.yaml keeps the dataset as typed, relative to the folder training started from
    if cfg.data.dataset.startswith(".") and not dataset.exists():
        raise UserError(f"--resume: the run's dataset {cfg.data.dataset!r} is relative to the folder training "
                        f"started from and is not found from here; resume from that folder or add "
                        f"--set data.dataset=PATH")
    return cfg
