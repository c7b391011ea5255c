"""What every benchmark does the same way: record the data set it read and how much of the
machine the hypervisor gave to others while it timed, and clear only the folders it made.

A local path says nothing on another machine (and an absolute one names this machine's
folders), so a result records the data set by its public name and the sha256 of the files
read: a reader can tell which data it was, and whether theirs is byte for byte the same.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from sentiment_lora.integrity import PREFIX, sha256_file
from sentiment_lora.storage import write_json

DATA_SUFFIXES = (".parquet", ".arrow", ".csv", ".tsv", ".json", ".jsonl", ".txt")
"""The files ``datasets`` reads from a local data set folder; its README is not data."""

PUBLIC_NAMES = {
    "# IMDB Large Movie Review Dataset (Maas et al., ACL 2011)": "stanfordnlp/imdb",
    "# SST-5: Stanford Sentiment Treebank, five classes (sentence level)":
        "SST-5 (Socher et al., 2013), sentence level, as github:prrao87/fine-grained-sentiment data/sst",
}
"""A local folder's README title -> the public data set it holds, as its README says. SST-5 is
named by the files its README says it was rebuilt from, not by a Hub id: a Hub copy (such as
SetFit/sst5) may differ in its text, and this one was not compared with any."""


def dataset_record(dataset: str) -> dict:
    """``{"name", "sha256", "files"}`` of the data set a benchmark read. A Hub id is its own
    public name, its files are the Hub cache's (no hash). A local folder: the public name its
    README gives (None when unknown) and one sha256 over its data files' names and hashes."""
    folder = Path(dataset)
    if not folder.is_dir():
        return {"name": dataset, "sha256": None, "files": None}
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix in DATA_SUFFIXES)
    digest = hashlib.sha256()
    for name in files:
        digest.update(f"{name}\0{sha256_file(folder / name)}\n".encode())
    return {"name": public_name(folder), "sha256": PREFIX + digest.hexdigest(), "files": files}


def public_name(folder: Path) -> str | None:
    """The public name of the data set in a local folder, by its README's title; None when unknown."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    lines = readme.read_text(encoding="utf-8").splitlines()
    return PUBLIC_NAMES.get(lines[0].strip()) if lines else None


STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times(stat: str | None = None) -> dict:
    """The machine's CPU time so far by kind (clock ticks), from the first line of /proc/stat, or
    of ``stat``; empty where there is none."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return {}
    return dict(zip(STAT_FIELDS, (int(x) for x in stat.split("\n", 1)[0].split()[1:])))


def stolen_share(before: dict, after: dict) -> float | None:
    """The share of the CPU time between two ``cpu_times`` that the hypervisor gave to other
    guests (steal); None where it is not counted. A timing taken while it was large measured the
    neighbours as much as the code, which is how a benchmark tells a slow round from a slow host."""
    spent = {k: after[k] - before[k] for k in STAT_FIELDS if k in before and k in after}
    total = sum(spent.values())
    return round(spent["steal"] / total, 4) if total > 0 and "steal" in spent else None


# The fixed accuracy protocol of bench_quality.py (IMDB): change it only together with its results.
QUALITY_PROTOCOL = ["data.train_size=2000", "data.val_size=200", "data.test_size=2000", "data.seed=42"]
ROOT = Path(__file__).resolve().parents[1]


def quality_samples(dataset: str):
    """The protocol's seeded samples (train, validation, test) and the hybrid preset's config."""
    from sentiment_lora.config import load_config
    from sentiment_lora.data import prepare_data

    cfg = load_config(ROOT / "configs" / "smollm2-hybrid.yaml", [f"data.dataset={dataset}", *QUALITY_PROTOCOL])
    return cfg, prepare_data(cfg.data, cfg.prompt.label_words)


MADE = ".made-by-benchmarks.json"
"""In a benchmark's work folder: the part folders a benchmark made there, by name."""


def fresh_folder(work: str | Path, name: str, bench: str) -> Path:
    """``work/name``, absent, for one part of ``bench`` to write. A folder already there is
    removed only when ``work``'s record says ``bench`` made it (and it is no link); any other is
    refused in one line with nothing touched, since it may hold a user's own run."""
    work = Path(work)
    folder, record = work / name, work / MADE
    made = json.loads(record.read_text()) if record.is_file() else {}
    if folder.exists() or folder.is_symlink():
        if made.get(name) != bench or folder.is_symlink():
            raise SystemExit(f"error: {str(folder)!r} exists and {bench} did not make it; nothing there was "
                             f"touched: choose another work folder, or move it away yourself")
        shutil.rmtree(folder)
    made[name] = bench
    write_json(record, made)
    return folder
