"""A saved classifier, reloaded from its run folder alone: ``predict`` and ``predict_proba``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .config import DataConfig, ModelConfig, PromptConfig
from .data import clean_text
from .errors import UserError
from .metrics import predict_labels
from .prompt import Prompt
from .storage import read_json

SPEC_FORMAT = "sentiment-lora-classifier/1"


class SentimentClassifier:
    """Base model + LoRA adapter + prompt + threshold: text in, label out."""

    def __init__(self, model, tokenizer, prompt: Prompt, threshold: float = 0.5, method: str = "logits",
                 batch_size: int = 16, max_new_tokens: int = 5, clean_html: bool = True, spec: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.threshold = threshold
        self.method = method
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.clean_html = clean_html
        self.spec = spec or {}

    @property
    def label_words(self) -> list[str]:
        return list(self.prompt.cfg.label_words)

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", dtype: str = "auto",
             batch_size: int | None = None) -> SentimentClassifier:
        run_dir = Path(run_dir)
        spec_path = run_dir / "classifier.json"
        if not spec_path.is_file():
            raise UserError(f"{str(run_dir)!r} is not a classifier run folder (no classifier.json); "
                            f"pass the --output-dir of a finished 'sentiment-lora train'")
        try:
            spec = read_json(spec_path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{spec_path} is not valid JSON; the run folder is damaged, train again") from None
        if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
            raise UserError(f"{spec_path} is not a sentiment-lora classifier spec (format {SPEC_FORMAT})")
        return cls.from_spec(spec, run_dir, device=device, dtype=dtype, batch_size=batch_size)

    @classmethod
    def from_spec(cls, spec: dict, run_dir: str | Path, device: str = "auto", dtype: str = "auto",
                  batch_size: int | None = None) -> SentimentClassifier:
        from .model import load_adapter, load_base_model, load_tokenizer, pick_device, pick_dtype

        adapter = Path(run_dir) / spec.get("adapter", "adapter")
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"{str(run_dir)!r} has no adapter/adapter_config.json; the run folder is incomplete")
        model_cfg = ModelConfig(**{**spec["base_model"], "device": device, "dtype": dtype})
        p = spec["prompt"]
        prompt_cfg = PromptConfig(template=p["template"], label_words=p["label_words"],
                                  max_length=p["max_length"], truncation=p["truncation"])
        tok = load_tokenizer(model_cfg)
        prompt = Prompt(tok, prompt_cfg)
        if prompt.label_token_ids != p["label_token_ids"]:
            raise UserError(f"the tokenizer of {model_cfg.name_or_path!r} maps the label words to "
                            f"{prompt.label_token_ids}, the saved classifier to {p['label_token_ids']}: "
                            f"it is not the base model this adapter was trained on")
        torch_device = pick_device(model_cfg.device)
        base = load_base_model(model_cfg, torch_device, pick_dtype(model_cfg.dtype, torch_device), tok.pad_token_id)
        model = load_adapter(base, adapter)
        model.eval()
        return cls(model, tok, prompt, threshold=float(spec.get("threshold", 0.5)),
                   method=spec.get("method", "logits"), batch_size=batch_size or spec.get("batch_size", 16),
                   max_new_tokens=spec.get("max_new_tokens", 5),
                   clean_html=spec.get("data", {}).get("clean_html", True), spec=spec)

    def _encode(self, texts) -> list[list[int]]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise UserError(f"text {i + 1} is empty; give non-empty texts to classify")
        return self.prompt.encode([clean_text(t, self.clean_html) for t in texts]).input_ids

    def predict_proba(self, texts) -> np.ndarray:
        """Probabilities over the label words, shape (n, labels), columns in label order."""
        from .evaluate import score

        ids = self._encode(texts)
        if not ids:
            return np.zeros((0, len(self.label_words)))
        return score(self.model, ids, self.prompt.label_token_ids, self.tokenizer.pad_token_id, self.batch_size)

    def predict_proba_generate(self, texts) -> tuple[np.ndarray, int]:
        from .evaluate import score_generate

        return score_generate(self.model, self.tokenizer, self._encode(texts), self.label_words,
                              self.tokenizer.pad_token_id, self.batch_size, self.max_new_tokens)

    def predict(self, texts) -> list[str]:
        """Label word per text (the threshold applies to binary tasks)."""
        probs = self.predict_proba(texts)
        return [self.label_words[i] for i in predict_labels(probs, self.threshold)]

    def data_config(self, dataset: str | None = None) -> DataConfig:
        """How the training data was read, so evaluation reads a dataset the same way."""
        d = dict(self.spec.get("data", {}))
        if dataset is not None:
            d["dataset"] = dataset
        keys = ("dataset", "text_column", "label_column", "label_values", "clean_html")
        return DataConfig(**{k: d[k] for k in keys if k in d}, train_size=None, test_size=None)


# --- the seed notebook's names, kept working -------------------------------------------


def load_model_with_lora(run_dir: str | Path):
    """Seed-compatible loader: returns ``(model, tokenizer)`` of a saved classifier."""
    clf = SentimentClassifier.load(run_dir)
    clf.model.sentiment_classifier = clf  # lets predict_sentiment find the template and threshold
    return clf.model, clf.tokenizer


def predict_sentiment(text: str, model, tokenizer) -> str:
    """Seed-compatible: "Positive" or "Negative" (the saved label words) for one text."""
    clf = getattr(model, "sentiment_classifier", None)
    if clf is None:  # a model loaded some other way: use the seed's prompt and labels
        clf = SentimentClassifier(model, tokenizer, Prompt(tokenizer, PromptConfig()))
    return clf.predict([text])[0]


# --- reading texts to classify from a file ----------------------------------------------


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Texts from .txt (one per line), .jsonl (a ``text`` field) or .csv (a ``text`` column)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"input file {str(path)!r} not found")
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"input file {str(path)!r} is not UTF-8 (byte {exc.start}); re-save it as UTF-8") from None
    suffix = path.suffix.lower()
    texts: list[str] = []
    if suffix == ".jsonl":
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{n} is not valid JSON; write one JSON object per line") from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise UserError(f"{path}:{n} has no string field {field!r}; write {{\"{field}\": \"...\"}}")
            texts.append(row[field])
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(content))
        if reader.fieldnames is None or field not in reader.fieldnames:
            raise UserError(f"{path} has no column {field!r} (columns: {reader.fieldnames or 'none'}); "
                            f"add a header row with a {field!r} column")
        texts = [row[field] or "" for row in reader]
    elif suffix in (".txt", ""):
        texts = [line for line in content.splitlines() if line.strip()]
    else:
        raise UserError(f"input file {str(path)!r}: unknown type {suffix!r}; use .txt, .jsonl or .csv")
    if not texts:
        raise UserError(f"input file {str(path)!r} holds no texts")
    return texts
