"""Atomic file writes: a file appears complete under its final name, or not at all."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import UserError

# A longer input line (or parquet text) is a row with an error: it is never held in memory whole,
# and the prompt would keep only a few hundred tokens of it anyway. Here, not in predict, so the
# CLI can show it without importing numpy.
MAX_LINE_BYTES = 10_000_000


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path: str | Path, save: Callable[[Path], None]) -> Path:
    """Let ``save(tmp_path)`` write a file (e.g. ``plt.savefig``), then move it in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_text(data: Any, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON: NaN and infinity are refused (they are not JSON, and mean a bug upstream),
    and characters a terminal would act on (DEL, C1 controls, line and paragraph separators,
    bidi overrides) are escaped, so printing a file never runs escape sequences."""
    return _TERMINAL.sub(lambda m: f"\\u{ord(m.group()):04x}",
                         json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False, default=default))


_TERMINAL = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json_text(data, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return write_text(path, "".join(json_text(r) + "\n" for r in rows))


def write_dir(path: str | Path, save: Callable[[Path], None], replace: bool = False) -> Path:
    """Let ``save(tmp_dir)`` fill a folder, then swap it in place of ``path``.

    ``path`` may exist only as an empty folder, unless ``replace`` says the caller made the
    folder there and may replace it: files can appear while ``save`` works, and a folder
    this process did not write is never deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        for f in tmp.rglob("*"):  # some writers (safetensors) make 0600 files; a folder is meant to be shared
            if f.is_file():
                os.chmod(f, 0o666 & ~_umask())
        if not replace:
            _move_into(tmp, path)
        elif path.exists():  # the old folder goes to a fresh name of ours, never onto one that may be a user's
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _move_into(tmp: Path, path: Path) -> None:
    """Rename the folder ``tmp`` to ``path``, which must be missing or an empty folder: the
    rename itself refuses anything else, so there is no moment to lose a file in."""
    import errno

    try:
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        raise UserError(f"{str(path)!r} is no longer an empty folder (something was put there while this command "
                        f"ran); nothing there was touched and the output was not written: choose another path") \
            from None


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def path_problem(path: str | Path, want: str = "file") -> str | None:
    """Why ``path`` is not an existing ``want`` ("file" or "folder"), in words; None when it is."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if want == "folder":
        return None if stat.S_ISDIR(mode) else "is a file, not a folder"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe, socket or device)"
    return None


def check_output_folder(path: str | Path, option: str, empty: bool = True) -> None:
    """Before any heavy work: ``path`` is a folder that can be created or written (and, with
    ``empty``, holds nothing yet)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {str(path)!r} is a file, not a folder; choose a folder path")
    if empty and path.is_dir() and any(path.iterdir()):
        raise UserError(f"{option} {str(path)!r} exists and is not empty; choose another {option}")
    parent = next((p for p in (path.absolute(), *path.absolute().parents) if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise UserError(f"{option} {str(path)!r} cannot be created: {str(parent)!r} is a file; choose another path")
    problem = write_problem(parent)
    if problem is not None:
        raise UserError(f"{option} {str(path)!r} cannot be written ({problem} in {str(parent)!r}); "
                        f"choose a writable folder")


def write_problem(folder: str | Path) -> str | None:
    """Why nothing can be created in the existing ``folder``; None when something can. A probe
    folder is made and removed, since permission bits say nothing for root or a read-only mount."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-probe.", dir=folder))
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None
