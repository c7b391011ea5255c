"""Loading, cleaning, de-duplicating and balanced sampling of a labelled text dataset."""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DataConfig
from .errors import UserError
from .storage import write_problem

_BR = re.compile(r"<br\s*/?>", flags=re.IGNORECASE)
_DATA_SUFFIXES = {".parquet", ".csv", ".json", ".jsonl", ".arrow", ".txt"}


@dataclass
class Sample:
    """Parallel lists; ``ids`` are ``split:row`` so predictions can be traced to the source."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx) -> Sample:
        return Sample([self.ids[i] for i in idx], [self.texts[i] for i in idx], [self.labels[i] for i in idx])


@dataclass
class DataBundle:
    train: Sample
    val: Sample
    test: Sample
    stats: dict


# Line-break markup, white space and control characters (NUL among them): a text of nothing
# else says nothing, and is empty by the one rule every reader and the server apply.
_BLANK = re.compile(r"(?:<br\s*/?>|[\s\x00-\x1f\x7f-\x9f])*", flags=re.IGNORECASE)


def is_blank(text: str) -> bool:
    """Whether ``text`` is empty once markup, white space and control characters are removed."""
    return _BLANK.fullmatch(text) is not None


def text_problem(text) -> str | None:
    """Why ``text`` cannot be classified, in words; None when it can."""
    if not isinstance(text, str):
        return f"is {type(text).__name__}, not text"
    if is_blank(text):
        return "is empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: undecodable bytes smuggled in by surrogateescape
        return f"is not valid UTF-8 (character {exc.start + 1})"
    return None


def check_text(text, where: str) -> str:
    """``text`` when it can be classified, else a UserError naming ``where`` and the fix."""
    problem = text_problem(text)
    if problem is not None:
        raise UserError(f"{where} {problem}; give non-empty UTF-8 texts to classify")
    return text


def clean_text(text: str, clean_html: bool = True) -> str:
    if clean_html:
        text = _BR.sub(" ", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def looks_local(name: str) -> bool:
    """A path rather than a Hub id (``imdb``, ``stanfordnlp/imdb``): fail fast if it is missing
    instead of asking the Hub about it."""
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def _read_aclimdb(root: Path, split: str, name: str) -> dict[str, list]:
    if not (root / split / "pos").is_dir():
        raise UserError(f"dataset {name!r}: aclImdb folder has no {split}/pos; "
                        f"set data.train_split/test_split to one of its folders")
    texts, labels = [], []
    for label, sub in ((0, "neg"), (1, "pos")):
        for f in sorted((root / split / sub).glob("*.txt"), key=lambda p: p.name):
            texts.append(f.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    return {"text": texts, "label": labels}


TRAIN_DATASET_OPTION = "DATA=PATH or --set data.dataset=PATH"
"""How ``make`` and ``train`` name the dataset, for the hint of a dataset error."""


def _is_aclimdb(path: Path) -> bool:
    return path.is_dir() and (path / "train" / "pos").is_dir() and (path / "train" / "neg").is_dir()


def check_dataset_location(cfg: DataConfig, option: str = TRAIN_DATASET_OPTION) -> None:
    """The dataset checks that need no import: a local path exists, and a folder holds data files.
    ``train`` runs them before it loads a tokenizer or a model, so a mistyped path is one line at
    once, not after a model load (or a Hub lookup that times out offline)."""
    name = cfg.dataset
    path = Path(name).expanduser()
    if _is_aclimdb(path):
        return
    if looks_local(name) and not path.exists():
        raise UserError(f"dataset {name!r} not found; pass an existing folder ({option}) or a Hub id like "
                        f"stanfordnlp/imdb")
    if path.is_dir() and not any(p.suffix in _DATA_SUFFIXES for p in path.rglob("*") if p.is_file()):
        raise UserError(f"dataset folder {name!r} holds no parquet, csv or jsonl files")


def load_splits(cfg: DataConfig, splits: list[str], option: str = TRAIN_DATASET_OPTION) -> dict[str, dict[str, list]]:
    """Return ``{split: {column: values}}`` for the requested splits, or fail clearly; ``option``
    is how the caller's command names the dataset, for the hint."""
    name = cfg.dataset
    path = Path(name).expanduser()
    if _is_aclimdb(path):
        return {split: _read_aclimdb(path, split, name) for split in splits}
    check_dataset_location(cfg, option)

    import datasets

    try:
        ds = datasets.load_dataset(str(path) if path.exists() else name, cfg.subset)
    except Exception as exc:  # datasets raises many types; all mean "could not read it"
        check_datasets_cache()  # an unwritable HOME fails here too, and is not the dataset's fault
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"could not load dataset {name!r}: {first}. Where the Hub is unreachable, "
                        f"pass a local copy ({option})") from None
    out = {}
    for split in splits:
        if split not in ds:
            raise UserError(f"dataset {name!r} has no split {split!r} (it has: {', '.join(ds)}); "
                            f"set data.train_split / data.test_split")
        missing = [c for c in (cfg.text_column, cfg.label_column) if c not in ds[split].column_names]
        if missing:
            raise UserError(f"dataset {name!r} split {split!r} has no column {missing[0]!r} "
                            f"(columns: {', '.join(ds[split].column_names)}); set data.text_column / data.label_column")
        out[split] = {"text": ds[split][cfg.text_column], "label": ds[split][cfg.label_column]}
    return out


def check_datasets_cache() -> None:
    """A UserError naming the datasets cache folder when it cannot be made or written; creates nothing."""
    import datasets.config

    folder = Path(datasets.config.HF_DATASETS_CACHE).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # the root, at least
    if not existing.is_dir():
        problem = f"{str(existing)!r} is a file"
    else:
        problem = write_problem(existing)
        problem = problem and f"{problem} in {str(existing)!r}"
    if problem:
        raise UserError(f"the datasets cache folder {str(folder)!r} cannot be created or written ({problem}); set "
                        f"HF_HOME (or HF_DATASETS_CACHE) to a writable folder")


def label_mapper(cfg: DataConfig, label_words: list[str]):
    """Return a function mapping a raw label value to a class index, or raising UserError."""
    k = len(label_words)
    if cfg.label_values is not None:
        if len(cfg.label_values) != k:
            raise UserError(f"config: data.label_values has {len(cfg.label_values)} values "
                            f"but prompt.label_words has {k}; give one value per label word")
        by_string = {str(v).lower(): i for i, v in enumerate(cfg.label_values)}
    else:
        by_string = {w.lower(): i for i, w in enumerate(label_words)}

    def to_class(value) -> int:
        if isinstance(value, (bool, np.bool_)):
            value = int(value)
        if isinstance(value, (float, np.floating)) and cfg.label_values is None:
            if not float(value).is_integer():  # 0.0 / 1.0 are class indices stored as floats; 0.5 is not
                raise UserError(f"label {float(value)!r} is not a class index; labels must be whole numbers 0 to "
                                f"{k - 1} or strings (map them with data.label_values)")
            value = int(value)
        if isinstance(value, (int, np.integer)) and cfg.label_values is None:
            if 0 <= int(value) < k:
                return int(value)
        elif str(value).strip().lower() in by_string:
            return by_string[str(value).strip().lower()]
        allowed = list(range(k)) if cfg.label_values is None else cfg.label_values
        raise UserError(f"label {value!r} is outside the label set {allowed}; "
                        f"map string labels with data.label_values or fix the data")

    return to_class


def prepare_split(raw: dict[str, list], split: str, cfg: DataConfig, to_class) -> Sample:
    """Clean one split's rows and map their labels; an empty text or a missing label is an error."""
    sample = Sample()
    for row, (text, label) in enumerate(zip(raw["text"], raw["label"])):
        if not isinstance(text, str) or is_blank(text):
            raise UserError(f"dataset {cfg.dataset!r} split {split!r} row {row} has an empty or missing "
                            f"text; remove such rows or pick another data.text_column")
        if label is None:
            raise UserError(f"dataset {cfg.dataset!r} split {split!r} row {row} has no label")
        sample.ids.append(f"{split}:{row}")
        sample.texts.append(clean_text(text, cfg.clean_html))
        sample.labels.append(to_class(label))
    return sample


def unseen(sample: Sample, seen: Sample) -> Sample:
    """The rows of ``sample`` whose text is not in ``seen``: a test review also in train measures
    memory, not classification, so every method scores only the others."""
    known = set(seen.texts)
    return sample.take([i for i, t in enumerate(sample.texts) if t not in known])


def load_full(dataset: str, label_words: list[str], splits=("train", "test")) -> dict[str, Sample]:
    """Every row of the given splits, cleaned and mapped to class indices (no sampling)."""
    cfg = DataConfig(dataset=dataset, train_size=None, test_size=None)
    raw = load_splits(cfg, list(splits))
    to_class = label_mapper(cfg, label_words)
    return {s: prepare_split(raw[s], s, cfg, to_class) for s in splits}


def balanced_indices(labels: list[int], n: int | None, num_classes: int, rng: np.random.Generator,
                     exclude: set[int] = frozenset(), what: str = "sample") -> list[int]:
    """Seeded sample with as equal a count per class as ``n`` allows (n=None: all rows)."""
    pools = [[i for i, y in enumerate(labels) if y == c and i not in exclude] for c in range(num_classes)]
    if n is None:
        chosen = [i for pool in pools for i in pool]
    else:
        chosen = []
        for c, pool in enumerate(pools):
            want = n // num_classes + (1 if c < n % num_classes else 0)
            if want > len(pool):
                raise UserError(f"{what}: asked for {want} examples of class {c} but only {len(pool)} are "
                                f"available; lower the sample size")
            chosen += [pool[j] for j in rng.permutation(len(pool))[:want]]
    return [chosen[j] for j in rng.permutation(len(chosen))]


def stratified_indices(labels: list[int], n: int | None, num_classes: int, rng: np.random.Generator,
                       exclude: set[int] = frozenset(), what: str = "sample") -> list[int]:
    """Seeded sample keeping the class proportions of the rows available (largest remainders
    round the counts), in a seeded random order. n=None: all rows."""
    pools = [[i for i, y in enumerate(labels) if y == c and i not in exclude] for c in range(num_classes)]
    total = sum(map(len, pools))
    if n is None:
        n = total
    if n > total:
        raise UserError(f"{what}: asked for {n} examples but only {total} are available; lower the sample size")
    quotas = [n * len(p) / total if total else 0 for p in pools]
    counts = [int(q) for q in quotas]
    for c in sorted(range(num_classes), key=lambda c: -(quotas[c] - counts[c]))[: n - sum(counts)]:
        counts[c] += 1
    chosen = [pool[j] for pool, want in zip(pools, counts) for j in rng.permutation(len(pool))[:want]]
    return [chosen[j] for j in rng.permutation(len(chosen))]


def draw(cfg: DataConfig, labels: list[int], n: int | None, num_classes: int, rng: np.random.Generator,
         exclude: set[int] = frozenset(), what: str = "sample") -> list[int]:
    """A sample by ``data.sampling``: balanced, stratified, or all rows (``n`` ignored)."""
    if cfg.sampling == "all":
        n = None
    pick = stratified_indices if cfg.sampling == "stratified" else balanced_indices
    return pick(labels, n, num_classes, rng, exclude, what)


def prepare_data(cfg: DataConfig, label_words: list[str], option: str | None = None) -> DataBundle:
    """Load the splits, clean, de-duplicate, and draw seeded samples by ``data.sampling``;
    ``option`` is how the caller's command names the dataset (``load_splits``)."""
    k = len(label_words)
    splits = [cfg.train_split, cfg.test_split] + ([cfg.val_split] if cfg.val_split else [])
    raw = load_splits(cfg, splits, **({"option": option} if option else {}))
    to_class = label_mapper(cfg, label_words)
    train_all, test_all, *own_val = (prepare_split(raw[s], s, cfg, to_class) for s in splits)
    val_all = own_val[0] if own_val else None

    first = {t: i for i, t in reversed(list(enumerate(train_all.texts)))}  # each text's first row
    train_dupes = {i for i, t in enumerate(train_all.texts) if first[t] != i}
    test_in_train = {i for i, t in enumerate(test_all.texts) if t in first}
    test_dupes = len(test_all.texts) - len(set(test_all.texts))

    rng = np.random.default_rng(cfg.seed)
    if val_all is not None:  # the dataset's own validation split; rows also in train are dropped
        val_in_train = {i for i, t in enumerate(val_all.texts) if t in first}
        val = val_all.take(draw(cfg, val_all.labels, cfg.val_size or None, k, rng, val_in_train,
                                "validation sample"))
        val_idx = []
    else:
        # Carved from train, the validation sample keeps its size even when the rest takes all rows.
        carve = dataclasses.replace(cfg, sampling="stratified") if cfg.sampling == "all" else cfg
        val_idx = draw(carve, train_all.labels, cfg.val_size, k, rng, train_dupes, "validation sample") \
            if cfg.val_size else []
        val = train_all.take(val_idx)
    train_idx = draw(cfg, train_all.labels, cfg.train_size, k, rng, train_dupes | set(val_idx), "train sample")
    test_idx = draw(cfg, test_all.labels, cfg.test_size, k, rng, test_in_train, "test sample")
    missing = sorted(set(range(k)) - {train_all.labels[i] for i in train_idx})
    if missing:  # a classifier trained without a class can never learn to predict it
        raise UserError(f"dataset {cfg.dataset!r}: the train sample has no example of label {missing[0]} "
                        f"({label_words[missing[0]]!r}); every class needs training examples: check "
                        f"data.label_column and data.label_values, or the data")

    stats = {
        "train_rows": len(train_all),
        "test_rows": len(test_all),
        "duplicates_in_train": len(train_dupes),
        "duplicates_in_test": test_dupes,
        "test_rows_in_train_dropped": len(test_in_train),
        "train_sample": len(train_idx),
        "val_sample": len(val),
        "val_from": cfg.val_split or cfg.train_split,
        "sampling": cfg.sampling,
        "test_sample": len(test_idx),
    }
    return DataBundle(train_all.take(train_idx), val, test_all.take(test_idx), stats)


KNOWN_DATASETS = {
    frozenset({"1a89057532cebdead794df49073fbf5ee21059cd72d0b0310da059bf5c6b015c",
               "7fda268b5f67d7414fcf214fece18528cfd1e9a2850a3f90dffc5047495ad5f3"}): "stanfordnlp/imdb",
}
"""Local copies whose public name is known, by the sha256 of their data files (every file at the
folder's top but a README): the aclImdb parquet files as shipped in ``shared/imdb``. Only an exact
copy is named; another local dataset is called by its folder's name."""


def public_dataset(dataset: str, *roots: Path) -> str:
    """A dataset's name for a card or a page: a Hub id as it is; a local folder (found as given, or
    under one of ``roots``) by its known public name, else by the folder's name, never its path."""
    if not looks_local(dataset):
        return dataset
    found = [p for p in [Path(dataset).expanduser(), *(Path(r) / dataset for r in roots)] if p.is_dir()]
    digests = dataset_digests(found[0]) if found else None
    return KNOWN_DATASETS.get(digests) or Path(dataset).name or dataset


def dataset_digests(folder: Path) -> frozenset[str] | None:
    """The sha256 of each data file at ``folder``'s top (READMEs aside), which ``KNOWN_DATASETS`` is
    keyed by; None for a folder of more than 8 files (aclImdb's per-review layout is not hashed)."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.upper().startswith("README")]
    if not 0 < len(files) <= 8:
        return None
    return frozenset(_file_digest(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per version of it (the server's /info asks often)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
