"""Predicting over files of any size: streamed input, appended output, resumable.

Records are read one by one (.txt one per line, .jsonl, .csv, .parquet) and scored in chunks, so
memory stays flat. Each chunk's output lines are appended and flushed as soon as it is scored; a
sidecar ``OUTPUT.partial`` marks the output unfinished and names its input, so an interrupted run
continues where it stopped, with no line written twice or skipped.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import is_blank, text_problem
from .errors import UserError
from .storage import MAX_LINE_BYTES, json_text, path_problem, read_json, write_json, write_problem

SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")
PARTIAL = ".partial"


@dataclass
class Record:
    row: int  # 0-based among the input's records (blank lines of .txt / .jsonl are none)
    text: str | None  # None when the record holds no usable text (empty, or not a string)
    id: Any = None  # the record's own id, from ``id_field``, when one was asked for
    error: str | None = None  # why it could not be read (a malformed line): a null label, not a crash
    too_long: bool = False  # the error is the line's length: a fact of the data, not a sign of a wrong file


def raw_lines(stream, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of a binary stream, ``None`` for each line longer than ``limit`` bytes: such a
    line is skipped in blocks, so memory stays within ``limit`` whatever the input holds."""
    if not hasattr(stream, "readline"):  # an iterable of lines (a test's stand-in for stdin)
        yield from (line if len(line) <= limit + 1 else None for line in stream)
        return
    while line := stream.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
            pass
        yield None


def _too_long(where: str, limit: int) -> str:
    return f"{where} is longer than {limit:,} bytes; split it, or raise the limit with --max-line-bytes"


def _lines(stream, name: str, limit: int) -> Iterator[tuple[str, str | None, str | None, bool]]:
    """(where, decoded line or None, error, whether the error is the line's length) of non-blank
    lines. Split on \\n only, so a carriage return or U+2028 inside a line never splits a text."""
    for number, raw in enumerate(raw_lines(stream, limit), 1):
        where = f"{name}:{number}"
        if raw is None:
            yield where, None, _too_long(where, limit), True
            continue
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError as exc:
            yield where, None, f"{where} is not UTF-8 (byte {exc.start + 1} of the line); convert it to UTF-8", False
            continue
        if line.strip():
            yield where, line, None, False


def _error(row: int, error: str, too_long: bool = False) -> Record:
    return Record(row, None, error=error, too_long=too_long)


def record_of(row: int, value, rid=None, where: str = "") -> Record:
    """A record of ``value``: None text when it is empty; an error when it is not usable text.
    Every reader, the Ray shards and the server's /classify make their records here."""
    if value is None or isinstance(value, str) and is_blank(value):
        return Record(row, None, rid)
    problem = text_problem(value)
    if problem is not None:
        return Record(row, None, rid, error=f"{where or f'record {row + 1}'}: the text {problem}")
    return Record(row, value, rid)


def iter_text_lines(stream, name: str, limit: int = MAX_LINE_BYTES, field: str | None = None,
                    id_field: str | None = None) -> Iterator[Record]:
    """Records of a binary stream of one text per line (a .txt file, standard input), or with
    ``field`` of one JSON object per line (a .jsonl file)."""
    for row, (where, line, error, too_long) in enumerate(_lines(stream, name, limit)):
        if error:
            yield _error(row, error, too_long)
        elif field is None:
            yield record_of(row, line, where=where)
        else:
            yield _json_record(row, line, where, field, id_field)


def _json_record(row: int, line: str, where: str, field: str, id_field: str | None) -> Record:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # also a 5000-digit number, or [[[[... 2000 deep
        return _error(row, f"{where} is not valid JSON; write one JSON object per line")
    if not isinstance(obj, dict) or field not in obj or not (obj[field] is None or isinstance(obj[field], str)):
        return _error(row, f"{where} has no string field {field!r}; write {{\"{field}\": \"...\"}} or choose the "
                           f"field with --field")
    return record_of(row, obj[field], obj.get(id_field) if id_field else None, where)


def _check_columns(path: Path, columns: list[str], field: str, id_field: str | None, csv_file: bool) -> None:
    """The text and id columns are there; a CSV's may be missing for want of a header row."""
    for name in (field, id_field):
        if name and name not in columns:
            shown = ", ".join(repr(n) for n in columns[:20])
            shown = shown if len(shown) <= 300 else shown[:297] + "..."
            fix = f"add a header row with a {name!r} column, or " if csv_file else ""
            raise UserError(f"{path} has no column {name!r} (columns: {shown}); {fix}choose it with --field / "
                            f"--id-field")


class _CsvLines:
    """The decoded physical lines of a CSV file for ``csv.reader``, each over the length limit
    replaced by an empty line and counted, so the record it was part of becomes an error row."""

    def __init__(self, stream, limit: int):
        self.lines = raw_lines(stream, limit)
        self.number = self.cut = 0

    def __iter__(self) -> Iterator[str]:
        for raw in self.lines:
            self.number += 1
            if raw is None:
                self.cut += 1
            yield "\n" if raw is None else raw.decode("utf-8-sig" if self.number == 1 else "utf-8")


def _iter_csv(path: Path, field: str, id_field: str | None, limit: int) -> Iterator[Record]:
    csv.field_size_limit(min(limit, 2**31 - 1))  # a field spread over many lines is bounded too
    with open(path, "rb") as f:
        lines = _CsvLines(f, limit)
        reader = csv.reader(lines)
        try:
            header = next(reader, None)
            if header is None:
                return
            _check_columns(path, header, field, id_field, csv_file=True)
            yield from _csv_records(path, reader, lines, header, field, id_field, limit)
        except UnicodeDecodeError as exc:
            raise UserError(f"input file {str(path)!r} is not UTF-8 near line {lines.number} (byte {exc.start}); "
                            f"re-save it as UTF-8") from None
        except csv.Error as exc:
            raise UserError(f"{path}:{lines.number} is not valid CSV ({exc}); fix the file") from None


def _csv_records(path: Path, reader, lines: _CsvLines, header: list[str], field: str, id_field: str | None,
                 limit: int) -> Iterator[Record]:
    """Rows as records; a blank line is no record, unless it stands for a line cut for length."""
    row, seen_cut = 0, 0
    for values in reader:
        if lines.cut > seen_cut:
            seen_cut = lines.cut
            yield _error(row, _too_long(f"{path}:{lines.number}", limit), too_long=True)
        elif values:
            cell = dict(zip(header, values))  # as csv.DictReader: a repeated column name, the last wins
            yield record_of(row, cell.get(field), cell.get(id_field) if id_field else None, f"{path}:{lines.number}")
        else:
            continue
        row += 1


def _iter_parquet(path: Path, field: str, id_field: str | None, limit: int, batch: int = 1024) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types; all mean "not a readable parquet file"
        raise UserError(f"input file {str(path)!r} is not a readable parquet file ({exc}); check the file") from None
    schema = pf.schema_arrow
    _check_columns(path, schema.names, field, id_field, csv_file=False)
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"{path}: column {field!r} holds {kind}, not text; choose the text column with --field")
    row = 0
    columns = [field] + ([id_field] if id_field and id_field != field else [])
    for chunk in pf.iter_batches(batch_size=batch, columns=columns):
        column = chunk.column(field)
        # Over-long texts are dropped before they become Python strings (a second copy).
        long = pc.fill_null(pc.greater(pc.binary_length(column), limit), False)
        texts = pc.if_else(long, pa.scalar(None, column.type), column).to_pylist()
        ids = chunk.column(id_field).to_pylist() if id_field else [None] * len(texts)
        for text, rid, cut in zip(texts, ids, long.to_pylist()):
            where = f"{path} row {row + 1}"
            yield _error(row, _too_long(where, limit), too_long=True) if cut else record_of(row, text, rid, where)
            row += 1


def iter_records(path: str | Path, field: str = "text", id_field: str | None = None,
                 max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Record]:
    """Records of a .txt, .jsonl, .csv or .parquet file, read as they are needed; a line or text
    longer than ``max_line_bytes`` is a record with an error."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*SUFFIXES, ""):
        raise UserError(f"input file {str(path)!r}: unknown type {path.suffix!r}; use {', '.join(SUFFIXES)}")
    if suffix == ".csv":
        yield from _iter_csv(path, field, id_field, max_line_bytes)
    elif suffix == ".parquet":
        yield from _iter_parquet(path, field, id_field, max_line_bytes)
    else:
        with open(path, "rb") as f:
            yield from iter_text_lines(f, str(path), max_line_bytes, field if suffix == ".jsonl" else None, id_field)


def check_input(path: str | Path, field: str = "text", id_field: str | None = None,
                max_line_bytes: int = MAX_LINE_BYTES) -> None:
    """Before any model loads: the file exists, has a known type, and its first records parse."""
    path = Path(path)
    problem = path_problem(path)
    if problem is not None:
        raise UserError(f"input file {str(path)!r} {problem}; pass a .txt, .jsonl, .csv or .parquet file "
                        f"(or pipe texts to standard input)")
    try:
        first = list(itertools.islice(iter_records(path, field, id_field, max_line_bytes), 64))
    except OSError as exc:
        raise UserError(f"input file {str(path)!r} cannot be read ({exc.strerror}); check its permissions") from None
    _check_first(first, f"input file {str(path)!r}")
    if id_field and all(r.id is None for r in first):
        raise UserError(f"{path}: no record among the first {len(first)} has the id field {id_field!r}; "
                        f"check --id-field")


def _check_first(first: list[Record], name: str) -> None:
    if not first or all(r.text is None and r.error is None for r in first):
        raise UserError(f"{name} holds no texts")
    # Later malformed records get a null label and an "error"; the first ones are the likeliest sign of a wrong
    # file or --field, so they stop the run before it starts. A line too long is a fact of the data, anywhere.
    bad = next((r for r in first if r.error and not r.too_long), None)
    if bad is not None:
        raise UserError(bad.error)


def check_records(records: Iterable[Record], name: str, n: int = 64) -> Iterator[Record]:
    """The same records, after the first ``n`` were checked as ``check_input`` checks a file's."""
    it = iter(records)
    first = list(itertools.islice(it, n))
    _check_first(first, name)
    return itertools.chain(first, it)


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """All texts of a small file, in order; an empty one is an error (use ``iter_records`` for large files)."""
    check_input(path, field)
    texts = []
    for rec in iter_records(path, field):
        if rec.error:
            raise UserError(rec.error)
        if rec.text is None:
            raise UserError(f"{path}: record {rec.row + 1} has an empty text; remove it or fill it in")
        texts.append(rec.text)
    return texts


def _newlines(f) -> tuple[int, int]:
    """(newlines in a binary file read from its start, the offset just past the last one)."""
    n = pos = end = 0
    while block := f.read(1 << 22):
        n += block.count(b"\n")
        if (i := block.rfind(b"\n")) >= 0:
            end = pos + i + 1
        pos += len(block)
    return n, end


def count_records(path: str | Path) -> int | None:
    """About how many records a file holds, cheaply (for the progress bar's ETA)."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        n, end = _newlines(f)
        return n + (end != f.tell()) - (path.suffix.lower() == ".csv")  # a last line without \n; a csv header


def chunked(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    it = iter(records)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def classify_chunk(clf, chunk: list[Record]) -> list[tuple[Record, str | None, np.ndarray | None]]:
    """(record, label, probabilities) per record; a record without text (or unreadable) gets no label."""
    todo = [i for i, r in enumerate(chunk) if r.text is not None]
    probs = clf.predict_proba([chunk[i].text for i in todo]) if todo else np.zeros((0, len(clf.label_words)))
    labels = clf.labels_of(probs)
    out: list = [(r, None, None) for r in chunk]
    for j, i in enumerate(todo):
        out[i] = (chunk[i], labels[j], probs[j])
    return out


def output_row(rec: Record, label: str | None, probs: np.ndarray | None, label_words: list[str],
               explanation: dict | None = None) -> dict:
    """One line of a predictions file: row (and id), label, its probability, all probabilities;
    with ``explanation`` (``explain.Explanation.to_dict``), the words that pushed the label too."""
    row: dict = {"row": rec.row}
    if rec.id is not None:  # NaN is not JSON: an id read as a float NaN is written as text
        row["id"] = rec.id if not (isinstance(rec.id, float) and not np.isfinite(rec.id)) else str(rec.id)
    if probs is None:
        return {**row, "label": None, "prob": None, "probs": None, "error": rec.error or "empty text"}
    prob = float(probs[label_words.index(label)]) if label is not None else None
    row = {**row, "label": label, "prob": None if prob is None else round(prob, 6),
           "probs": {w: round(float(p), 6) if np.isfinite(p) else None for w, p in zip(label_words, probs)}}
    return row if explanation is None else {**row, "explanation": explanation}


# --- resumable output ---------------------------------------------------------------------


def classifier_identity(clf) -> str:
    """What makes two classifiers give the same predictions: spec, decision, dtype, precision and adapter
    weights."""
    from .cache import file_sha256
    from .integrity import json_digest

    weights = None
    if clf.folder is not None and clf.spec is not None and clf.spec.adapter is not None:
        path = Path(clf.folder) / clf.spec.adapter / "adapter_model.safetensors"
        weights = file_sha256(path) if path.is_file() else None
    return json_digest({"spec": clf.spec.to_dict() if clf.spec else {}, "threshold": clf.threshold,
                        "method": clf.method, "dtype": clf.weights_dtype,
                        "precision": getattr(clf, "precision", "fp32"), "weights": weights})


def _identity(path: Path, field: str, id_field: str | None, classifier: str | None) -> dict:
    """What a ``.partial`` sidecar must match for its output to be continued (the input's content
    is checked by ``records_digest``)."""
    return {"input": path.name, "field": field, "id_field": id_field, "classifier": classifier}


_CONSUMED = ("rows", "sha256")  # the sidecar's record of the input rows read so far


def records_digest(records: Iterable[Record], digest=None):
    """A running sha256 over records' content: which input rows an output was made from, whatever
    their file's size or modification time says."""
    from .integrity import rows_digest

    return rows_digest(([r.row, r.text, r.id, r.error] for r in records), digest)


def complete_lines(output: str | Path) -> int:
    """Complete (newline-ended) lines of a predictions file; 0 when it does not exist."""
    try:
        with open(output, "rb") as f:
            return _newlines(f)[0]
    except OSError:
        return 0


def _last_line(f, end: int) -> bytes:
    """The last complete line of a file that ends at ``end`` with a newline."""
    size = 1 << 16
    while True:
        start = max(0, end - size)
        f.seek(start)
        block = f.read(end - start)
        cut = block.rfind(b"\n", 0, len(block) - 1)
        if cut >= 0 or start == 0:
            return block[cut + 1:]
        size *= 4


def _resume_point(f, output: Path, sidecar: Path) -> int:
    """Under the lock: drop a half-written last line (the process died mid-write), check the
    rows are whole, and return how many are done."""
    f.seek(0)
    n, end = _newlines(f)
    if end != f.tell():
        f.truncate(end)
    if n:
        try:
            ok = json.loads(_last_line(f, end))["row"] == n - 1
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise UserError(f"--output {str(output)!r} does not end with row {n - 1}; it was edited or damaged, "
                            f"delete it and {sidecar.name} to start over")
    return n


def prepare_output(input_path: str | Path, output: str | Path, field: str = "text", id_field: str | None = None,
                   classifier: str | None = None) -> bool:
    """Check the output file, writing nothing; True when it is an unfinished run to continue.

    A finished output is never overwritten; an unfinished one (with its ``.partial`` sidecar) is
    continued only for the same input, options and (when given) ``classifier``; ``predict_file``
    checks the input's content when the run starts."""
    input_path, output = Path(input_path), Path(output)
    _check_output_path(input_path, output)
    if not output.exists():
        return False
    sidecar = Path(f"{output}{PARTIAL}")
    if not sidecar.is_file():
        raise UserError(f"--output {str(output)!r} exists and is finished; choose another file or delete it")
    try:
        saved = read_json(sidecar)
    except (OSError, ValueError):
        saved = None
    want = _identity(input_path, field, id_field, classifier)
    if not _same_run(saved, want):
        raise UserError(f"--output {str(output)!r} is an unfinished prediction of another or a changed input; "
                        f"delete it and {sidecar.name} to start over")
    if classifier is not None and saved.get("classifier") != classifier:
        raise UserError(f"--output {str(output)!r} is an unfinished prediction by another classifier; continue it "
                        f"with that one, or delete it and {sidecar.name} to start over")
    return True


def _check_output_path(input_path: Path, output: Path) -> None:
    """An output file name that can be written, and is not the input."""
    if output.is_dir():
        raise UserError(f"--output {str(output)!r} is a folder; give a file name such as predictions.jsonl")
    if output.suffix.lower() != ".jsonl":
        raise UserError(f"--output {str(output)!r}: predictions are written as JSON lines; name it *.jsonl")
    if output.resolve() == input_path.resolve():
        raise UserError("--output names the input file; choose another output file")
    folder = next((p for p in output.resolve().parents if p.exists()), None)
    problem = "not a folder" if folder is None or not folder.is_dir() else write_problem(folder)
    if problem is not None:
        raise UserError(f"--output {str(output)!r} cannot be written ({problem} in {str(folder)!r}); choose a "
                        f"writable folder")
    if output.exists() and not os.access(output, os.W_OK):
        raise UserError(f"--output {str(output)!r} is not writable; check its permissions")


def _same_run(saved, want: dict) -> bool:
    """Whether a sidecar names the same input and options as ``want`` (its classifier aside) and
    how many of the input's rows it had read."""
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), t) for k, t in zip(_CONSUMED, (int, str))):
        return False
    return ({k: v for k, v in saved.items() if k not in ("classifier", *_CONSUMED)}
            == {k: v for k, v in want.items() if k != "classifier"})


def predict_file(clf, input_path: str | Path, output: str | Path, field: str = "text", id_field: str | None = None,
                 chunk_size: int = 1024, progress: bool = True, max_line_bytes: int = MAX_LINE_BYTES) -> dict:
    """Classify every record of ``input_path`` into ``output`` (JSON lines), resuming an unfinished
    one; returns counts (rows written now, found done, without a label) and seconds."""
    import time

    from tqdm.auto import tqdm

    input_path, output = Path(input_path), Path(output)
    identity = _identity(input_path, field, id_field, classifier_identity(clf))
    resuming = prepare_output(input_path, output, field, id_field, identity["classifier"])
    sidecar = Path(f"{output}{PARTIAL}")
    saved = read_json(sidecar) if resuming else None
    with _locked_output(output, sidecar, identity, resuming) as out:
        done = _resume_point(out, output, sidecar)
        out.seek(0, os.SEEK_END)
        started = time.perf_counter()
        records, digest, hashed = _verified_input(iter_records(input_path, field, id_field, max_line_bytes), saved,
                                                  done, output, sidecar)
        written = unlabelled = 0
        bar = tqdm(total=count_records(input_path), initial=done, unit="text", desc="predict",
                   disable=not progress, dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
        with bar:
            for chunk in chunked(records, chunk_size):
                # The sidecar first, so it names every row the output may hold for a resumed run to check.
                records_digest([r for r in chunk if r.row >= hashed], digest)
                hashed = max(hashed, chunk[-1].row + 1)
                write_json(sidecar, {**identity, "rows": hashed, "sha256": digest.hexdigest()})
                results = classify_chunk(clf, chunk)
                unlabelled += sum(probs is None for _, _, probs in results)
                out.write("".join(json_text(output_row(rec, label, probs, clf.label_words), default=str) + "\n"
                                  for rec, label, probs in results).encode("utf-8"))
                out.flush()
                os.fsync(out.fileno())  # a line on disk is a line a resumed run will not redo
                written += len(chunk)
                bar.update(len(chunk))
        sidecar.unlink()
    return {"rows": written, "resumed_after": done, "empty": unlabelled,
            "seconds": round(time.perf_counter() - started, 2)}


def _locked_output(output: Path, sidecar: Path, identity: dict, resuming: bool):
    """The output file open for appending, under an exclusive lock; a new one gets its sidecar."""
    import fcntl

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if not resuming:
            write_json(sidecar, {**identity, "rows": 0, "sha256": records_digest([]).hexdigest()})
        out = open(output, "ab+")
    except OSError as exc:
        raise UserError(f"cannot write --output {str(output)!r} ({exc.strerror}); choose a writable place") from None
    try:  # two runs appending to one file would interleave their lines
        fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        out.close()
        raise UserError(f"another 'sentiment-lora predict' is writing {str(output)!r}; wait for it, or choose "
                        f"another --output") from None
    return out


def _verified_input(records: Iterator[Record], saved: dict | None, done: int, output: Path, sidecar: Path):
    """(records still to classify, digest of those read, how many were read), once the rows an
    unfinished output was made from are checked to be still the input's first rows: a file
    replaced by another of the same size and time must not be continued."""
    digest = records_digest([])
    if saved is None:
        return records, digest, 0
    rows = saved["rows"]
    if done > rows:
        raise UserError(f"--output {str(output)!r} holds {done} rows but {sidecar.name} names {rows}; it was edited "
                        f"or damaged: delete both to start over")
    records_digest(itertools.islice(records, done), digest)
    pending = list(itertools.islice(records, rows - done))  # at most the chunk the sidecar named ahead
    records_digest(pending, digest)
    if digest.hexdigest() != saved["sha256"]:
        raise UserError(f"the input's first {rows} rows are not the ones the unfinished --output {str(output)!r} "
                        f"was made from (the file was changed or replaced); delete it and {sidecar.name} to start "
                        f"over, or restore the input")
    return itertools.chain(pending, records), digest, rows
