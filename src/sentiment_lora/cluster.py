"""``predict --engine ray``: Ray Data reads the input (parquet, jsonl or csv; a file, folder or
glob, local or any filesystem Ray reads such as ``s3://``), hands batches to actors that each load
the classifier once, and writes parquet shards, each row with the input's id. Without ``--address``
a Ray instance is started on this machine for the run."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import UserError, require

FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
OUTPUT_COLUMNS = ("label", "prob", "probs", "error")


def require_ray():
    require("ray.data", "ray", "--engine ray")  # the Data library is an extra of ray itself
    import ray

    return ray


def _remote(path: str) -> bool:
    return "://" in path


def input_paths(file: str | None, dataset: str | None, split: str) -> list[str]:
    """The files or URIs to read: ``file`` as given (a file, folder or glob), or the files of
    ``split`` in a dataset folder laid out as on the Hub (``test-00000-of-00001.parquet``)."""
    if file is not None:
        if _remote(file):
            return [file]
        found = sorted(glob.glob(file))  # Ray Data takes files and folders, not patterns
        if not found:
            raise UserError(f"--file {file!r} not found; give a file, a folder or a glob of .parquet, .jsonl or .csv")
        return found
    root = Path(dataset)
    if not root.is_dir():
        raise UserError(f"--dataset {dataset!r} is not a folder; give a dataset folder (with files such as "
                        f"{split}-00000-of-00001.parquet) or --file")
    found = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix in FORMATS
                   and (p.name.startswith(f"{split}-") or p.stem == split or p.parent.name == split))
    if not found:
        raise UserError(f"--dataset {dataset!r} has no .parquet, .jsonl or .csv file of split {split!r}; name "
                        f"another with --split")
    return found


def input_format(paths: list[str]) -> str:
    """parquet, json or csv, from the files' suffixes (a folder: from the files inside it)."""
    suffixes = set()
    for path in paths:
        if not _remote(path) and Path(path).is_dir():
            suffixes |= {p.suffix for p in Path(path).rglob("*") if p.is_file() and p.suffix in FORMATS}
        else:
            suffixes.add(Path(path.split("?")[0].rstrip("*")).suffix)
    kinds = {FORMATS.get(s) for s in suffixes}
    if len(kinds) != 1 or None in kinds:
        raise UserError(f"cannot tell the input's format from {sorted(suffixes) or 'no file'}; --engine ray reads "
                        f".parquet, .jsonl or .csv files, one format at a time")
    return kinds.pop()


@contextmanager
def quiet_ray() -> Iterator[None]:
    """Ray's INFO lines and progress kept off the terminal, as other libraries are, and put back
    after; errors still show, Ray Data's log files keep everything, and ``SENTIMENT_LORA_VERBOSE``
    leaves it all on. Ray's C++ core still prints its error-level notes: RAY_BACKEND_LOG_LEVEL
    would also thin the raylet and GCS log files a failed run is debugged from."""
    if os.environ.get("SENTIMENT_LORA_VERBOSE"):
        yield
        return
    import ray.data

    context = ray.data.DataContext.get_current()
    ray_logger = logging.getLogger("ray")
    consoles = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    saved = (context.enable_progress_bars, ray_logger.level, [h.level for h in consoles])
    context.enable_progress_bars = False
    ray_logger.setLevel(logging.ERROR)
    for handler in consoles:
        handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.enable_progress_bars, level, levels = saved
        ray_logger.setLevel(level)
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)


class Scorer:
    """A Ray actor: loads the classifier once, then classifies the batches it is handed."""

    def __init__(self, run_dir: str, device: str, field: str, id_field: str, batch_size: int | None,
                 precision: str | None = None):
        import ray
        import torch

        from .classifier import SentimentClassifier

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:  # as many threads as CPUs reserved, so actors on one machine do not fight
            torch.set_num_threads(max(1, int(cpus)))
        self.clf = SentimentClassifier.load(run_dir, device=device, batch_size=batch_size, precision=precision)
        self.field, self.id_field = field, id_field

    def __call__(self, batch):
        import pyarrow as pa

        from .predict import classify_chunk, output_row, record_of

        ids = batch[self.id_field].tolist()
        records = [record_of(i, text, rid, f"{self.id_field} {rid!r}")
                   for i, (text, rid) in enumerate(zip(batch[self.field].tolist(), ids))]
        words = self.clf.label_words
        rows = [output_row(*result, words) for result in classify_chunk(self.clf, records)]
        # One schema for every batch: a column all null must not give a shard a type of its own.
        schema = pa.schema([("label", pa.string()), ("prob", pa.float64()),
                            ("probs", pa.struct([(w, pa.float64()) for w in words])), ("error", pa.string())])
        return pa.Table.from_pylist(rows, schema=schema).add_column(0, self.id_field, pa.array(ids))


def predict_ray(run_dir: str | Path, paths: list[str], output: str, field: str = "text", id_field: str = "id",
                batch_size: int = 64, concurrency: int = 2, address: str | None = None, device: str = "cpu",
                cpus_per_actor: float = 1.0, model_batch_size: int | None = None,
                rows_per_shard: int = 100_000, precision: str | None = None) -> dict:
    """Classify every row of ``paths`` into parquet shards of about ``rows_per_shard`` rows under
    ``output``, which (when local) appears whole or not at all; returns counts and seconds."""
    from .spec import ClassifierSpec

    ClassifierSpec.load(run_dir)  # a bad folder is an error now, not in every actor
    kind = input_format(paths)
    if not _remote(output) and Path(output).exists() and (not Path(output).is_dir() or any(Path(output).iterdir())):
        raise UserError(f"--output {output!r} exists and is not empty; choose a new folder for the parquet shards")
    if id_field in OUTPUT_COLUMNS:  # an argument's fault: said before Ray starts
        raise UserError(f"--id-field {id_field!r} would be overwritten by an output column of that name "
                        f"({', '.join(OUTPUT_COLUMNS)}); give the input's own id column")
    ray = require_ray()
    started = time.perf_counter()
    with quiet_ray():
        start_ray(ray, address, int(np.ceil(concurrency * cpus_per_actor)))
        ds = _read_input(paths, kind, field, id_field)
        # An actor gets a whole block per task and a small file is one block: one batch a block, or one actor does all.
        ds = ds.repartition(target_num_rows_per_block=batch_size)
        scorer = {"run_dir": str(Path(run_dir).resolve()), "device": device, "field": field, "id_field": id_field,
                  "batch_size": model_batch_size, "precision": precision}
        scored = ds.map_batches(Scorer, fn_constructor_kwargs=scorer, batch_size=batch_size,
                                compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=cpus_per_actor,
                                num_gpus=1 if device.startswith("cuda") else 0, batch_format="pandas")
        shards, rows = _write_shards(scored, ds, paths, output, rows_per_shard, on_cluster=address is not None)
    return {"rows": rows, "shards": shards, "seconds": time.perf_counter() - started, "output": output}


_STARTED: dict[str, str] = {}
"""The node id of the local Ray instance ``start_ray`` started in this process, if any."""


def start_ray(ray, address: str | None, reserved: int) -> None:
    """Ray, connected or started, with one logical CPU more than the actors reserve: otherwise
    Ray Data's read and write tasks wait for ever. An instance this function started with too
    few (an earlier call asked for fewer actors) is started again; one started by someone else
    is never stopped, and a shortfall there is one line."""
    need = reserved + 1
    if address is None and ray.is_initialized():
        have = int(ray.cluster_resources().get("CPU", 0))
        if have >= need:
            return
        if _STARTED.get("node") != ray.get_runtime_context().get_node_id():
            raise UserError(f"the Ray instance already running in this process has {have} CPUs, and "
                            f"{reserved} for the actors plus one for reading and writing are needed; ask "
                            f"for fewer actors (concurrency), or start Ray with num_cpus={need}")
        ray.shutdown()
    cpus = None if address else max(os.cpu_count() or 1, need)
    ray.init(address=address, num_cpus=cpus, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    if address is None:
        _STARTED["node"] = ray.get_runtime_context().get_node_id()


def _read_input(paths: list[str], kind: str, field: str, id_field: str):
    """The input as a Ray dataset, its text and id columns checked, and that it has a row."""
    import ray.data

    read = {"parquet": ray.data.read_parquet, "json": ray.data.read_json, "csv": ray.data.read_csv}[kind]
    try:
        ds = read(paths)
        columns = ds.columns()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {', '.join(paths)} as {kind}: {str(exc).splitlines()[0][:160]}") from None
    # Now, before each actor loads the classifier for nothing; first, as an empty CSV has no schema.
    if not ds.limit(1).count():
        raise UserError(f"{', '.join(paths)} has no rows: nothing to classify")
    for option, name in (("--field", field), ("--id-field", id_field)):
        if name not in columns:
            raise UserError(f"the input has no column {name!r} (it has {', '.join(columns)}); name it with {option}")
    return ds


def _write_shards(scored, ds, paths: list[str], output: str, rows_per_shard: int, on_cluster: bool) -> tuple[int, int]:
    """Write ``scored`` to a remote URI directly, to a local folder through a temporary one renamed
    into place once every row is there; (shards, rows) written locally."""
    import pyarrow.parquet as pq

    local = not _remote(output)
    target = output
    if local:
        parent = Path(output).resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        # A fresh name of its own: a folder of that name already there may be someone else's.
        target = tempfile.mkdtemp(prefix=f".{Path(output).name}.", suffix=".tmp", dir=parent)
    try:
        # The blocks are one batch each: written as they come, they would make myriads of tiny files.
        scored.write_parquet(target, min_rows_per_file=rows_per_shard)
        if not local:
            return 0, 0
        shards = list(Path(target).glob("*.parquet"))
        here = sum(pq.ParquetFile(f).metadata.num_rows for f in shards)
        # On a remote cluster the workers write a local path on their own nodes, not here (the driver
        # may even have made it, empty); the input is counted again only then, or when nothing is here.
        expected = ds.count() if on_cluster or not here else here
        if here != expected:
            raise UserError(f"only {here} of the {expected} rows' predictions for --output {output!r} are on this "
                            f"machine (a remote cluster's nodes write local paths to their own disks); with "
                            f"--address give --output a folder every node shares or a remote URI such as "
                            f"s3://bucket/predictions")
        if Path(output).is_dir():
            Path(output).rmdir()  # empty, checked above
        os.replace(target, output)
        return len(shards), here
    finally:
        if local:
            shutil.rmtree(target, ignore_errors=True)
