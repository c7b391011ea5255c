"""The user cache: content hashes of large files, and folders that are slow to build (a GGUF
model dequantized once into safetensors, config and tokenizer, instead of on every start).

- Where: ``$SENTIMENT_LORA_CACHE``, else ``~/.cache/sentiment-lora``.
- Keys: the source file's sha256 and the dtype, so an edited or replaced file gets a new entry.
- Atomic: built in a temporary folder and renamed into place under a file lock, so processes
  starting together build an entry once and never see half of it.
- Checked on read against the entry's manifest; a damaged entry is rebuilt with a warning. A
  hash is memoized (``hashes.json``) while the file's size, times and inode are unchanged, so a
  warm start hashes nothing, and a change that keeps them all (bit rot) is not seen.
- Shared: entries get umask-based modes, so one user's warm cache serves another; a cache that
  cannot be written costs the slow path and one warning per process.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from .integrity import entry as file_entry
from .integrity import manifest_problem, sha256_file
from .storage import read_json, write_dir, write_json

MANIFEST = "manifest.json"
_MEMO = "hashes.json"
_MEMO_LIMIT = 2000  # entries kept in hashes.json; the oldest go first


def cache_root() -> Path:
    return Path(os.environ.get("SENTIMENT_LORA_CACHE") or Path.home() / ".cache" / "sentiment-lora").expanduser()


_WARNED: set[str] = set()


def warn(message: str) -> None:
    """Print a warning once per process: one cause (an unwritable cache) meets the tokenizer, then the model."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr)


def _stat_key(st: os.stat_result) -> list[int]:
    # ctime too: it changes on every write and cannot be set back by a program, unlike mtime.
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_memo() -> dict:
    try:
        memo = read_json(cache_root() / _MEMO)
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _remember(digests: dict[Path, str]) -> None:
    """Record known content hashes of files (resolved paths) under their current stat."""
    memo = _read_memo()
    for path, digest in digests.items():
        memo.pop(str(path), None)
        memo[str(path)] = {"stat": _stat_key(path.stat()), "sha256": digest}
    while len(memo) > _MEMO_LIMIT:
        memo.pop(next(iter(memo)))
    try:  # a lost update (two writers) only costs a re-hash later
        write_json(cache_root() / _MEMO, memo)
    except OSError:
        pass


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content, memoized in the cache while the file's stat is unchanged."""
    path = Path(path).resolve()
    seen = _read_memo().get(str(path))
    if isinstance(seen, dict) and seen.get("stat") == _stat_key(path.stat()) and isinstance(seen.get("sha256"), str):
        return seen["sha256"]
    digest = sha256_file(path)
    _remember({path: digest})
    return digest


def check_entry(folder: Path) -> str | None:
    """None when ``folder`` matches its manifest, else what is wrong with it."""
    try:
        files = read_json(folder / MANIFEST)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is missing or unreadable"
    return manifest_problem(folder, files, sha256=file_sha256)


def cached_folder(kind: str, key: str, build: Callable[[Path], None], what: str) -> Path:
    """The folder ``kind/key`` of the cache, built by ``build(tmp_folder)`` when missing or damaged.
    An OSError (the cache cannot be written; callers fall back to the slow path) names the cache
    folder, not the entry's lock or temporary folder, so one cause gives one message."""
    parent = cache_root() / kind
    entry = parent / key
    if entry.is_dir() and check_entry(entry) is None:
        return entry
    try:
        return _build_entry(parent, key, build, what)
    except OSError as exc:
        if exc.filename is None or not _within(Path(exc.filename), cache_root()):
            raise  # not the cache's fault (the source file, say): as it was
        raise OSError(exc.errno, exc.strerror, str(parent)) from exc


def _within(path: Path, root: Path) -> bool:
    """``path`` is ``root``, inside it, or one of the folders above it (which making it needs)."""
    return path == root or root in path.parents or path in root.parents


def _build_entry(parent: Path, key: str, build: Callable[[Path], None], what: str) -> Path:
    from filelock import FileLock

    entry = parent / key
    parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(parent / f"{key}.lock")):
        for stale in parent.glob(f".{key}.*.tmp"):  # left by a build that was killed; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if entry.is_dir():  # someone may have built it while we waited for the lock
            problem = check_entry(entry)
            if problem is None:
                return entry
            warn(f"cached {what} in {entry} is damaged ({problem}); rebuilding it")
            shutil.rmtree(entry, ignore_errors=True)
        files: dict[str, dict] = {}

        def fill(tmp: Path) -> None:
            build(tmp)
            files.update({p.relative_to(tmp).as_posix(): file_entry(p) for p in sorted(tmp.rglob("*")) if p.is_file()})
            write_json(tmp / MANIFEST, {"what": what, "key": key, "files": files})

        write_dir(entry, fill)  # in ``.{key}.*.tmp`` (swept above), with umask modes, not mkdtemp's 0700
        # The rename keeps the files' stat: memoize the hashes under the final paths.
        _remember({(entry / name).resolve(): f["sha256"] for name, f in files.items()})
    return entry
