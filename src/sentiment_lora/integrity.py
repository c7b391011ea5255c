"""How every file sentiment-lora writes is told whole, changed or torn: one scheme, sha256.

- A binary file is named in a manifest beside it, with its size and sha256: a checkpoint in
  ``checkpoints/manifest.json``, a cache entry's files in its ``manifest.json``, a
  classifier's model files in ``classifier.json``'s ``files`` (``sha256:HEX``).
- A text file carries the hash of its own body: ``config.yaml`` on its last line,
  ``classifier.json`` in its ``checksum`` field (over its canonical JSON).
- A stream that grows (an unfinished ``predict --output``) is identified by a running
  digest of the rows read so far, kept in its ``.partial`` sidecar.

The checks return what is wrong in words, or None: the caller decides whether that means
an error, a fallback to an older copy, or a rebuild.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PREFIX = "sha256:"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's content, hex, read in 1 MiB blocks."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """``sha256:HEX`` of an object's canonical JSON (sorted keys, no spaces)."""
    return PREFIX + sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())


def entry(path: str | Path) -> dict:
    """A file's manifest entry: its size and sha256."""
    return {"size": Path(path).stat().st_size, "sha256": sha256_file(path)}


def entry_problem(path: str | Path, want: dict, sha256=sha256_file) -> str | None:
    """What is wrong with ``path`` against its manifest ``entry``; None when it matches. The
    size is compared first (cheap, and what a torn write changes)."""
    try:
        if Path(path).stat().st_size != want["size"]:
            return "has the wrong size"
        if sha256(path) != want["sha256"]:
            return "has the wrong content"
    except OSError:
        return "is missing"
    except (KeyError, TypeError):
        return "has a malformed manifest entry"
    return None


def manifest_problem(folder: str | Path, files: Any, sha256=sha256_file) -> str | None:
    """What is wrong with the files of ``folder`` against a manifest ``{name: entry}``; None
    when every one matches."""
    if not isinstance(files, dict) or not files:
        return "its manifest lists no files"
    for name, want in files.items():
        problem = entry_problem(Path(folder) / name, want, sha256)
        if problem is not None:
            return f"{name} {problem}"
    return None


def signed(body: str, header: str, mark: str) -> str:
    """A text file that carries its own hash: ``header``, the body, then ``mark`` + sha256 of the body."""
    return f"{header}\n{body}{mark}{sha256_bytes(body.encode('utf-8'))}\n"


def signature_holds(text: str, header: str, mark: str) -> bool:
    """Whether ``text`` is what ``signed`` wrote, unchanged since."""
    if not text.startswith(header + "\n"):
        return False
    body, _, last = text[len(header) + 1:].rstrip("\n").rpartition("\n")
    body += "\n" if body else ""
    return last.startswith(mark) and sha256_bytes(body.encode("utf-8")) == last[len(mark):]


def rows_digest(rows: Iterable[Any], digest=None):
    """A running sha256 over JSON rows (one per line), updated in place and returned: which
    rows of a stream a file was made from, whatever the stream's size or time says."""
    digest = digest or hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, default=str).encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest
