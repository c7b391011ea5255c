"""Scoring prompts with the model, and re-evaluating a saved classifier on a dataset."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .metrics import compute_metrics, predict_labels


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    # Longest first so similar lengths share a batch (little padding) and a memory
    # problem shows up on the first batch, not the last.
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def score(model, input_ids: list[list[int]], label_ids: list[int], pad_id: int, batch_size: int,
          progress: str | None = None) -> np.ndarray:
    """Probabilities over the label words, shape (n, labels): one forward pass per batch."""
    from .model import collate, label_logits

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    labels = torch.tensor(label_ids, device=device)
    probs = np.zeros((len(input_ids), len(label_ids)), dtype=np.float64)
    batches = _batches([len(x) for x in input_ids], batch_size)
    for idx in tqdm(batches, desc=progress, disable=progress is None, unit="batch", leave=False):
        batch = collate([input_ids[i] for i in idx], pad_id, device)
        logits = label_logits(model, batch["input_ids"], batch["attention_mask"], labels)
        probs[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    model.train(was_training)
    return probs


@torch.inference_mode()
def score_generate(model, tokenizer, input_ids: list[list[int]], label_words: list[str], pad_id: int,
                   batch_size: int, max_new_tokens: int, progress: str | None = None) -> tuple[np.ndarray, int]:
    """The seed's fallback: generate a few tokens and look for a label word in them.

    A review whose continuation names no label word gets equal probabilities and counts
    in the returned number of unparsed answers; it is never scored another way.
    """
    from .model import collate

    device = next(model.parameters()).device
    model.eval()
    k = len(label_words)
    probs = np.full((len(input_ids), k), 1.0 / k)
    patterns = [re.compile(rf"\b{re.escape(w.lower())}\b") for w in label_words]
    unparsed = 0
    for idx in tqdm(_batches([len(x) for x in input_ids], batch_size), desc=progress,
                    disable=progress is None, unit="batch", leave=False):
        batch = collate([input_ids[i] for i in idx], pad_id, device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        for i, text in zip(idx, texts):
            hits = [(m.start(), c) for c, pat in enumerate(patterns) if (m := pat.search(text.lower()))]
            if hits:
                probs[i] = 0.0
                probs[i, min(hits)[1]] = 1.0
            else:
                unparsed += 1
    return probs, unparsed


def evaluate_run(run_dir: str | Path, dataset: str | None = None, split: str = "test", limit: int | None = None,
                 method: str | None = None, batch_size: int | None = None, device: str = "auto",
                 dtype: str = "auto", output_dir: str | Path | None = None, seed: int = 42) -> dict:
    """Re-score a saved classifier on a dataset split; writes metrics.json and predictions.jsonl."""
    from .config import DataConfig, EvalConfig
    from .data import _prepare_split, balanced_indices, label_mapper, load_splits
    from .predict import SentimentClassifier
    from .storage import write_json, write_jsonl

    run_dir = Path(run_dir)
    clf = SentimentClassifier.load(run_dir, device=device, dtype=dtype, batch_size=batch_size)
    data_cfg = clf.data_config(dataset=dataset)
    data_cfg = DataConfig(**{**data_cfg.__dict__, "seed": seed})
    method = method or clf.method
    EvalConfig(method=method)  # validates the name
    raw = load_splits(data_cfg, [split])[split]
    sample = _prepare_split(raw, split, data_cfg, label_mapper(data_cfg, clf.label_words))
    if limit is not None:
        sample = sample.take(balanced_indices(sample.labels, limit, len(clf.label_words),
                                              np.random.default_rng(seed), what=f"--limit {limit}"))
    start = time.perf_counter()
    if method == "generate":
        probs, unparsed = clf.predict_proba_generate(sample.texts)
    else:
        probs, unparsed = clf.predict_proba(sample.texts), 0
    seconds = time.perf_counter() - start
    preds = predict_labels(probs, clf.threshold) if method == "logits" else probs.argmax(axis=1)
    metrics = compute_metrics(sample.labels, preds, probs, clf.label_words)
    metrics.update({"method": method, "threshold": clf.threshold, "unparsed": unparsed,
                    "dataset": data_cfg.dataset, "split": split,
                    "dtype": str(next(clf.model.parameters()).dtype).removeprefix("torch."),
                    "seconds": round(seconds, 2),
                    "reviews_per_s": round(len(sample) / seconds, 2) if seconds > 0 else None})
    out = Path(output_dir) if output_dir else run_dir / "evaluations" / f"{split}-{datetime.now():%Y%m%d-%H%M%S}"
    write_jsonl(out / "predictions.jsonl", prediction_rows(sample, preds, probs, clf.label_words))
    write_json(out / "metrics.json", metrics)
    metrics["output_dir"] = str(out)
    return metrics


def prediction_rows(sample, preds, probs, label_words) -> list[dict]:
    return [
        {"id": sample.ids[i], "gold": label_words[sample.labels[i]], "pred": label_words[int(preds[i])],
         "prob": float(probs[i, int(preds[i])]), "probs": [round(float(p), 6) for p in probs[i]]}
        for i in range(len(sample))
    ]
