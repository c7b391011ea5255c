"""``classifier.json``: what a saved classifier is, as a dataclass with ``to_dict`` / ``from_dict``.

This module is the one owner of that file. Everything that reads or writes it goes through
``ClassifierSpec.save`` and ``ClassifierSpec.load``, so a damaged or foreign file ends in
one clear error here rather than a KeyError somewhere else.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bagofwords import BASELINES
from .config import PromptConfig
from .errors import UserError, brief
from .integrity import PREFIX, json_digest, sha256_file
from .layout import ADAPTER_DIR, CONFIG, FIGURE_FILES, SPEC
from .storage import path_problem, read_json, write_json

FORMAT = "sentiment-lora-classifier/5"
SECTIONS = ("head", "stack", "onnx")
"""The optional sections this version reads. A spec names the ones it uses in ``sections``,
so a reader that lacks one refuses the file by that name instead of ignoring it."""
# Earlier formats, all still read: /1 (no fingerprint or bundled base, always an adapter),
# /2 (no optional section), /3 (a stack), /4 (a label head, and maybe a stack).
LEGACY = {"sentiment-lora-classifier/1": None, "sentiment-lora-classifier/2": (), "sentiment-lora-classifier/3":
          ("stack",), "sentiment-lora-classifier/4": ("head",)}
READABLE = (FORMAT, *LEGACY)
DATA_KEYS = ("dataset", "subset", "text_column", "label_column", "label_values", "clean_html", "test_split",
             "ordinal")
DATASET_IN_FOLDER = "dataset_in_folder"
"""True in a saved data section whose dataset is a local folder written relative to the classifier
folder (as a bundled base model is), so ``evaluate`` finds it from any shell folder and the two can
move together. Absent (older files, Hub ids): the dataset as typed at training."""


@dataclass
class BaseModelRef:
    name_or_path: str
    """As given at training: a Hub id, a local folder or ``package:NAME``. With ``bundled``,
    a folder relative to the classifier folder (``.`` for a merged export)."""
    gguf_file: str | None = None
    """GGUF file inside ``name_or_path``, dequantized on load."""
    fingerprint: str | None = None
    """``sha256:...`` of the base weights found at training (local bases); checked at load so a
    different model at the same path is an error, not silently wrong probabilities."""
    bundled: bool = False
    """The base model travels inside the classifier folder (``sentiment-lora export``)."""
    origin: str | None = None
    """Bundled: the base model the classifier was trained from, as given then (for the record)."""


@dataclass
class StackSpec:
    """A stack: the LLM's probabilities combined with a TF-IDF model's by a logistic regression
    fitted on the run's validation sample (``sentiment-lora stack``)."""

    baseline: str
    """The bag-of-words model stacked with the LLM, by its name in ``config.BASELINES``."""
    model_file: str
    """Its skops file, relative to the classifier folder (never a pickle)."""
    coef: list[list[float]]
    """Combiner weights, one row per class, over ``decision.stack_features(llm, baseline)``."""
    intercept: list[float]
    """Combiner bias, one per class."""
    pool: str | None = None
    """Dataset the baseline was trained on (its train split less the run's validation and test
    rows); None: the run's own training sample."""
    train_rows: int = 0
    """Rows the baseline was trained on."""
    llm_threshold: float = 0.5
    """The LLM's own decision threshold, before stacking (the stack decides at 0.5)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, classes: int, bad) -> StackSpec:
        if not isinstance(d, dict):
            raise bad(f"field 'stack' is {brief(d)}")
        width = 2 * (1 if classes == 2 else classes)

        def numbers(xs) -> bool:
            return isinstance(xs, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                and math.isfinite(x) for x in xs)

        if d.get("baseline") not in BASELINES:
            raise bad(f"stack.baseline {brief(d.get('baseline'))} must be one of {', '.join(BASELINES)}")
        if not isinstance(d.get("model_file"), str) or not _inside(d["model_file"]):
            raise bad(f"stack.model_file {brief(d.get('model_file'))} must be a path inside the folder")
        coef, intercept = d.get("coef"), d.get("intercept")
        if not (isinstance(coef, list) and len(coef) == classes and all(numbers(r) and len(r) == width for r in coef)
                and numbers(intercept) and len(intercept) == classes):
            raise bad(f"stack.coef and stack.intercept must be {classes} x {width} and {classes} finite numbers")
        pool, rows, threshold = d.get("pool"), d.get("train_rows", 0), d.get("llm_threshold", 0.5)
        if pool is not None and not isinstance(pool, str) or not isinstance(rows, int) or isinstance(rows, bool):
            raise bad("stack.pool must be a dataset name or null, and stack.train_rows a whole number")
        if not numbers([threshold]) or not 0 < threshold < 1:
            raise bad(f"stack.llm_threshold {brief(threshold)} must be a number between 0 and 1")
        return cls(baseline=d["baseline"], model_file=d["model_file"], coef=[list(map(float, r)) for r in d["coef"]],
                   intercept=list(map(float, d["intercept"])), pool=pool, train_rows=rows,
                   llm_threshold=float(threshold))


@dataclass
class ClassifierSpec:
    base_model: BaseModelRef
    """Which base model the adapter belongs to."""
    prompt: PromptConfig
    """Template, label words, max length and truncation, exactly as trained."""
    label_token_ids: list[int]
    """First token of each label word after the template, as the training tokenizer found it."""
    threshold: float = 0.5
    """Binary tasks: p(second label) at which the second label is predicted."""
    method: str = "logits"
    """Scoring method: logits (label-token probabilities) or generate (the seed's fallback)."""
    temperature: float = 1.0
    """Temperature scaling fitted on validation: probabilities are softmax(log p / T)."""
    adapter: str | None = ADAPTER_DIR
    """LoRA adapter folder inside the classifier folder; None once merged into the base."""
    batch_size: int = 16
    """Most texts per scoring forward pass, unless the caller chooses."""
    max_batch_tokens: int | None = None
    """Padded-token budget of a scoring batch (None: by batch_size alone)."""
    max_new_tokens: int = 5
    """Tokens generated per text by the generate method."""
    data: dict[str, Any] = field(default_factory=dict)
    """How the training data was read (dataset, columns, label values, cleaning, test split),
    so ``evaluate`` reads a dataset the same way."""
    files: dict[str, str] = field(default_factory=dict)
    """``sha256:...`` of each model file (adapter, bundled base, stack), relative to the folder;
    set by ``save`` and checked by ``load``."""
    stack: StackSpec | None = None
    """A TF-IDF model stacked with the LLM; None: the LLM's probabilities are the answer."""
    precision: str = "fp32"
    """CPU scoring precision it was calibrated and tested in (fp32, bf16 or int8); a CPU
    without the units scores in fp32."""
    head: str | None = None
    """The trained label rows of the LM head (``lora.head``), a safetensors file relative to the
    folder; None: the base model's own LM head."""
    onnx: str | None = None
    """An ONNX export's graph (``onnx_graph``), relative to the folder, scored by ONNX Runtime in
    ``precision``; None: a torch model."""

    @property
    def label_words(self) -> list[str]:
        return list(self.prompt.label_words)

    def to_dict(self, folder: str | Path | None = None) -> dict[str, Any]:
        """The JSON form; with ``folder``, the one written there (a local dataset relative to it)."""
        d = {
            "format": FORMAT,
            "base_model": dataclasses.asdict(self.base_model),
            "adapter": self.adapter,
            "method": self.method,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "prompt": {**dataclasses.asdict(self.prompt), "label_token_ids": list(self.label_token_ids)},
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "max_new_tokens": self.max_new_tokens,
            "precision": self.precision,
            "data": self._data_section(folder),
            "files": dict(self.files),
        }
        if self.stack is not None:
            d["stack"] = self.stack.to_dict()
        if self.head is not None:
            d["head"] = self.head
        if self.onnx is not None:
            d["onnx"] = self.onnx
        d["sections"] = [name for name in SECTIONS if name in d]
        return {**d, "checksum": checksum(d)}

    def _data_section(self, folder: str | Path | None) -> dict[str, Any]:
        data = {k: self.data[k] for k in DATA_KEYS if k in self.data}
        name = data.get("dataset")
        if folder is not None and isinstance(name, str) and Path(name).expanduser().exists():  # local, not a Hub id
            data["dataset"] = Path(os.path.relpath(Path(name).expanduser(), folder)).as_posix()
            data[DATASET_IN_FOLDER] = True
        return data

    @classmethod
    def from_dict(cls, d: Any, where: str = SPEC) -> ClassifierSpec:
        """Build and check a spec; any problem is a UserError naming ``where`` and the field. ``where``
        is the file's path: a dataset saved relative to its folder becomes an absolute path."""
        f = _Fields(where)
        sections = f.envelope(d)
        base = f.base_model(f.get(d, "base_model", dict))
        prompt, ids = f.prompt(f.get(d, "prompt", dict))
        adapter = f.get(d, "adapter", str, optional=d["format"] != "sentiment-lora-classifier/1")
        if adapter is None and not base.bundled:
            raise f.bad("no adapter and no bundled base model")
        files = f.files(d)
        head = f.head(d, sections, adapter, files)
        stack = f.stack(d, sections, len(prompt.label_words), files)
        scoring = f.scoring(d)
        onnx = f.onnx(d, sections, adapter, files, scoring["precision"])
        return cls(base_model=base, prompt=prompt, label_token_ids=list(ids), adapter=adapter, files=dict(files),
                   data=f.data(d), stack=stack, head=head, onnx=onnx, **scoring)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/classifier.json`` atomically, with the sha256 of each model file in
        ``folder``. Written last, it marks a complete folder."""
        folder = Path(folder)
        self.files = {name: PREFIX + sha256_file(folder / name) for name in self.model_files(folder)}
        return write_json(folder / SPEC, self.to_dict(folder))

    @classmethod
    def load(cls, folder: str | Path, verify: bool = True) -> ClassifierSpec:
        folder = Path(folder)
        path = folder / SPEC
        problem = path_problem(folder, "folder")
        if problem is not None:
            raise UserError(f"classifier folder {str(folder)!r} {problem}; pass the --output-dir of a finished "
                            f"'sentiment-lora train' or the folder of 'sentiment-lora export'")
        if folder_problem := path_problem(path):
            if folder_problem != "not found":
                raise UserError(f"{path} {folder_problem}; the classifier folder is damaged, train or export again")
            if (folder / CONFIG).is_file():
                raise UserError(f"{str(folder)!r} holds an unfinished training run (no {SPEC}); continue it with "
                                f"'sentiment-lora train --resume --output-dir {folder}'")
            raise UserError(f"{str(folder)!r} is not a classifier run folder (no {SPEC}); "
                            f"pass the --output-dir of a finished 'sentiment-lora train'")
        try:
            data = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path} is not valid JSON; the run folder is damaged, train again") from None
        spec = cls.from_dict(data, where=str(path))
        if verify:
            spec.verify_files(folder)
        return spec

    def model_files(self, folder: str | Path) -> list[str]:
        """The files that decide the predictions (adapter, head, bundled base, stack), relative to ``folder``."""
        folder = Path(folder)
        names = []
        if self.adapter is not None and (folder / self.adapter).is_dir():
            names += [p for p in (folder / self.adapter).rglob("*") if p.is_file()]
        if self.base_model.bundled and (folder / self.base_model.name_or_path).is_dir():
            base = folder / self.base_model.name_or_path
            names += [p for p in base.iterdir() if p.is_file() and p.name not in FIGURE_FILES]
        if self.stack is not None:
            names.append(folder / self.stack.model_file)
        if self.head is not None:
            names.append(folder / self.head)
        return sorted({p.relative_to(folder).as_posix() for p in names})

    def verify_files(self, folder: str | Path) -> None:
        """Every recorded model file is there with its recorded sha256: a torn, truncated or
        overwritten file is one clear error, never silently different probabilities."""
        from .cache import file_sha256

        folder = Path(folder)
        for name, want in self.files.items():
            path = folder / name
            problem = path_problem(path)
            if problem is not None:
                raise UserError(f"{path} {problem}; the classifier folder is incomplete: restore the file, or "
                                f"train (or export) again")
            try:
                have = PREFIX + file_sha256(path)
            except OSError as exc:
                raise UserError(f"{path} cannot be read ({exc.strerror}); check its permissions") from None
            if have != want:
                raise UserError(f"{path} is damaged (its sha256 differs from the one in {SPEC}); restore the file, "
                                f"or train (or export) again")


class _Fields:
    """Typed reading of a spec's JSON: every problem is one UserError naming the file and the field."""

    def __init__(self, where: str):
        self.where = where

    def bad(self, what: str) -> UserError:
        return UserError(f"{self.where}: {what}; the classifier folder is damaged or not from sentiment-lora, "
                         f"train or export it again")

    def get(self, obj: dict, key: str, types, section: str = "", optional: bool = False, default=None):
        name = f"{section}.{key}" if section else key
        if obj.get(key) is None and optional:
            return default
        if key not in obj:
            raise self.bad(f"missing field {name!r}")
        value = obj[key]
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
            raise self.bad(f"field {name!r} is {brief(value)}")
        return value

    def envelope(self, d) -> tuple[str, ...] | None:
        """Check the format and the checksum; return the optional sections the spec declares
        (None for /1, whose rules are /2's)."""
        if not isinstance(d, dict):
            raise self.bad("not a JSON object")
        if d.get("format") not in READABLE:
            raise UserError(f"{self.where} is not a sentiment-lora classifier spec (format {brief(d.get('format'))}, "
                            f"expected {FORMAT}); upgrade sentiment-lora or train again")
        if "checksum" in d and d["checksum"] != checksum({k: v for k, v in d.items() if k != "checksum"}):
            raise UserError(f"{self.where} was changed after it was saved (its checksum does not match); restore "
                            f"it, or, if you edited it on purpose, delete its \"checksum\" field")
        if d["format"] in LEGACY:
            return LEGACY[d["format"]]
        sections = self.get(d, "sections", list)
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown:
            raise UserError(f"{self.where} uses the section {brief(unknown[0])}, which this version of "
                            f"sentiment-lora does not read; upgrade sentiment-lora")
        return tuple(sections)

    def base_model(self, b: dict) -> BaseModelRef:
        return BaseModelRef(name_or_path=self.get(b, "name_or_path", str, "base_model"),
                            gguf_file=self.get(b, "gguf_file", str, "base_model", optional=True),
                            fingerprint=self.get(b, "fingerprint", str, "base_model", optional=True),
                            bundled=self.get(b, "bundled", bool, "base_model", optional=True, default=False),
                            origin=self.get(b, "origin", str, "base_model", optional=True))

    def data(self, d: dict) -> dict:
        """The data section; a dataset saved relative to the classifier folder, as an absolute path."""
        data = self.get(d, "data", dict, optional=True, default={})
        out = {k: data[k] for k in DATA_KEYS if k in data}
        if data.get(DATASET_IN_FOLDER) is True and isinstance(out.get("dataset"), str):
            out["dataset"] = os.path.abspath(Path(self.where).parent / out["dataset"])
        return out

    def prompt(self, p: dict) -> tuple[PromptConfig, list]:
        words = self.get(p, "label_words", list, "prompt")
        if not all(isinstance(w, str) for w in words):
            raise self.bad(f"field 'prompt.label_words' is {brief(words)}")
        try:
            prompt = PromptConfig(template=self.get(p, "template", str, "prompt"), label_words=list(words),
                                  max_length=self.get(p, "max_length", int, "prompt"),
                                  truncation=self.get(p, "truncation", str, "prompt"))
        except UserError as exc:
            raise self.bad(str(exc).removeprefix("config: ")) from None
        ids = self.get(p, "label_token_ids", list, "prompt")
        if len(ids) != len(words) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise self.bad(f"prompt.label_token_ids {brief(ids)} must be one token id per label word")
        return prompt, ids

    def scoring(self, d: dict) -> dict:
        """The decision and scoring fields, checked for range."""
        threshold = self.get(d, "threshold", (int, float), optional=True, default=0.5)
        if not (math.isfinite(threshold) and 0 < threshold < 1):
            raise self.bad(f"threshold {brief(threshold)} must be a number between 0 and 1")
        temperature = self.get(d, "temperature", (int, float), optional=True, default=1.0)
        if not (math.isfinite(temperature) and 0.01 <= temperature <= 100):
            raise self.bad(f"temperature {brief(temperature)} must be a number from 0.01 to 100")
        method = self.get(d, "method", str, optional=True, default="logits")
        if method not in ("logits", "generate"):
            raise self.bad(f"method {brief(method)} must be logits or generate")
        precision = self.get(d, "precision", str, optional=True, default="fp32")
        if precision not in ("fp32", "bf16", "int8"):
            raise self.bad(f"precision {brief(precision)} must be fp32, bf16 or int8")
        sizes = {"batch_size": self.get(d, "batch_size", int, optional=True, default=16),
                 "max_new_tokens": self.get(d, "max_new_tokens", int, optional=True, default=5),
                 "max_batch_tokens": self.get(d, "max_batch_tokens", int, optional=True)}
        if any(v is not None and v < 1 for v in sizes.values()):
            raise self.bad("batch_size, max_batch_tokens and max_new_tokens must be 1 or more")
        return {"threshold": float(threshold), "temperature": float(temperature), "method": method,
                "precision": precision, **sizes}

    def files(self, d: dict) -> dict:
        files = self.get(d, "files", dict, optional=True, default={})
        if not all(isinstance(k, str) and isinstance(v, str) and v.startswith("sha256:") and _inside(k)
                   for k, v in files.items()):
            raise self.bad("field 'files' must map relative paths inside the folder to sha256: hashes")
        return files

    def declared(self, d: dict, sections, name: str) -> bool:
        """Whether the spec holds the optional section ``name``, which its format must declare."""
        allowed = (*(sections or ()), *(("stack",) if d["format"] == "sentiment-lora-classifier/4" else ()))
        if d.get(name) is not None and name not in allowed:
            raise self.bad(f"field {name!r} needs format {FORMAT} with {name!r} in 'sections', not {d['format']}"
                           if d["format"] in LEGACY else f"field {name!r} is not named in 'sections'")
        if name in (sections or ()) and d.get(name) is None:
            raise self.bad(f"format {d['format']} but no {name}")
        return d.get(name) is not None

    def stack(self, d: dict, sections, classes: int, files: dict) -> StackSpec | None:
        if not self.declared(d, sections, "stack"):
            return None
        stack = StackSpec.from_dict(d["stack"], classes, self.bad)
        if stack.model_file not in files:
            raise self.bad(f"stack.model_file {stack.model_file!r} has no sha256 in field 'files'")
        return stack

    def onnx(self, d: dict, sections, adapter: str | None, files: dict, precision: str) -> str | None:
        if not self.declared(d, sections, "onnx"):
            return None
        onnx = self.get(d, "onnx", str)
        if adapter is not None or onnx not in files or not _inside(onnx):
            raise self.bad(f"onnx {onnx!r} must be a file of a merged export with a sha256 in field 'files'")
        if precision not in ("fp32", "int8"):
            raise self.bad(f"an ONNX export's precision is fp32 or int8, not {brief(precision)}")
        return onnx

    def head(self, d: dict, sections, adapter: str | None, files: dict) -> str | None:
        if not self.declared(d, sections, "head"):
            return None
        head = self.get(d, "head", str)
        if adapter is None or not head.startswith(f"{adapter}/") or not _inside(head) or head not in files:
            raise self.bad(f"head {head!r} must be a file inside the adapter folder with a sha256 in field 'files'")
        return head


def checksum(d: dict) -> str:
    """sha256 of a spec's canonical JSON: its own checksum field."""
    return json_digest(d)


def _inside(name: str) -> bool:
    p = Path(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts



def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)
