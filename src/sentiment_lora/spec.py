"""``classifier.json``: what a saved classifier is, as a dataclass with ``to_dict`` / ``from_dict``.

This module is the one owner of that file. Everything that reads or writes it goes through
``ClassifierSpec.save`` and ``ClassifierSpec.load``, so a damaged or foreign file ends in
one clear error here rather than a KeyError somewhere else.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PromptConfig
from .errors import UserError
from .storage import read_json, write_json

FILE = "classifier.json"
FORMAT = "sentiment-lora-classifier/2"
# /1 had no fingerprint, no bundled base and always an adapter; it reads as /2 with those unset.
READABLE = (FORMAT, "sentiment-lora-classifier/1")
DATA_KEYS = ("dataset", "text_column", "label_column", "label_values", "clean_html", "test_split")


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
    adapter: str | None = "adapter"
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

    @property
    def label_words(self) -> list[str]:
        return list(self.prompt.label_words)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "base_model": dataclasses.asdict(self.base_model),
            "adapter": self.adapter,
            "method": self.method,
            "threshold": self.threshold,
            "prompt": {**dataclasses.asdict(self.prompt), "label_token_ids": list(self.label_token_ids)},
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "max_new_tokens": self.max_new_tokens,
            "data": {k: self.data[k] for k in DATA_KEYS if k in self.data},
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = FILE) -> ClassifierSpec:
        """Build and check a spec; any problem is a UserError naming ``where`` and the field."""

        def bad(what: str) -> UserError:
            return UserError(f"{where}: {what}; the classifier folder is damaged or not from sentiment-lora, "
                             f"train or export it again")

        if not isinstance(d, dict):
            raise bad("not a JSON object")
        if d.get("format") not in READABLE:
            raise UserError(f"{where} is not a sentiment-lora classifier spec (format {d.get('format')!r}, "
                            f"expected {FORMAT}); upgrade sentiment-lora or train again")

        def get(obj: dict, key: str, types, section: str = "", optional: bool = False, default=None):
            name = f"{section}.{key}" if section else key
            if key not in obj:
                if optional:
                    return default
                raise bad(f"missing field {name!r}")
            value = obj[key]
            if value is None and optional:
                return default
            if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
                raise bad(f"field {name!r} is {value!r}")
            return value

        b = get(d, "base_model", dict)
        base = BaseModelRef(name_or_path=get(b, "name_or_path", str, "base_model"),
                            gguf_file=get(b, "gguf_file", str, "base_model", optional=True),
                            fingerprint=get(b, "fingerprint", str, "base_model", optional=True),
                            bundled=get(b, "bundled", bool, "base_model", optional=True, default=False),
                            origin=get(b, "origin", str, "base_model", optional=True))
        p = get(d, "prompt", dict)
        words = get(p, "label_words", list, "prompt")
        if not all(isinstance(w, str) for w in words):
            raise bad(f"field 'prompt.label_words' is {words!r}")
        try:
            prompt = PromptConfig(template=get(p, "template", str, "prompt"),
                                  label_words=list(get(p, "label_words", list, "prompt")),
                                  max_length=get(p, "max_length", int, "prompt"),
                                  truncation=get(p, "truncation", str, "prompt"))
        except UserError as exc:
            raise bad(str(exc).removeprefix("config: ")) from None
        ids = get(p, "label_token_ids", list, "prompt")
        if len(ids) != len(prompt.label_words) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                           for i in ids):
            raise bad(f"prompt.label_token_ids {ids!r} must be one token id per label word")
        threshold = get(d, "threshold", (int, float), optional=True, default=0.5)
        if not (math.isfinite(threshold) and 0 < threshold < 1):
            raise bad(f"threshold {threshold!r} must be a number between 0 and 1")
        method = get(d, "method", str, optional=True, default="logits")
        if method not in ("logits", "generate"):
            raise bad(f"method {method!r} must be logits or generate")
        legacy = d["format"] != FORMAT
        adapter = get(d, "adapter", str, optional=not legacy, default=None)
        if adapter is None and not base.bundled:
            raise bad("no adapter and no bundled base model")
        batch_size = get(d, "batch_size", int, optional=True, default=16)
        max_new_tokens = get(d, "max_new_tokens", int, optional=True, default=5)
        max_batch_tokens = get(d, "max_batch_tokens", int, optional=True)
        if batch_size < 1 or max_new_tokens < 1 or (max_batch_tokens is not None and max_batch_tokens < 1):
            raise bad("batch_size, max_batch_tokens and max_new_tokens must be 1 or more")
        data = get(d, "data", dict, optional=True, default={})
        return cls(base_model=base, prompt=prompt, label_token_ids=list(ids), threshold=float(threshold),
                   method=method, adapter=adapter, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                   max_new_tokens=max_new_tokens,
                   data={k: data[k] for k in DATA_KEYS if k in data})

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/classifier.json`` atomically. Written last, it marks a complete folder."""
        return write_json(Path(folder) / FILE, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> ClassifierSpec:
        folder = Path(folder)
        path = folder / FILE
        if not folder.is_dir():
            raise UserError(f"classifier folder {str(folder)!r} not found; pass the --output-dir of a finished "
                            f"'sentiment-lora train' or the folder of 'sentiment-lora export'")
        if not path.is_file():
            raise UserError(f"{str(folder)!r} is not a classifier run folder (no {FILE}); "
                            f"pass the --output-dir of a finished 'sentiment-lora train'")
        try:
            data = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path} is not valid JSON; the run folder is damaged, train again") from None
        return cls.from_dict(data, where=str(path))


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)
