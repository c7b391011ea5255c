"""Re-evaluating a saved classifier on a dataset split, and the predictions.jsonl rows."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np

from .decision import UNDECIDED, decide
from .layout import EVALUATIONS, METRICS, PREDICTIONS
from .metrics import compute_metrics


def evaluate_run(run_dir: str | Path, dataset: str | None = None, split: str = "test", limit: int | None = None,
                 method: str | None = None, batch_size: int | None = None, device: str = "auto",
                 dtype: str = "auto", output_dir: str | Path | None = None, seed: int = 42,
                 precision: str | None = None) -> dict:
    """Re-score a saved classifier on a dataset split; writes metrics.json and predictions.jsonl."""
    from .classifier import SentimentClassifier
    from .config import DataConfig, EvalConfig
    from .data import balanced_indices, label_mapper, load_splits, prepare_split
    from .precision import this_cpu
    from .storage import check_output_folder, write_dir, write_json, write_jsonl

    run_dir = Path(run_dir)
    if output_dir is not None:
        check_output_folder(output_dir, "output_dir")
    clf = SentimentClassifier.load(run_dir, device=device, dtype=dtype, batch_size=batch_size, precision=precision)
    data_cfg = DataConfig(**{**clf.data_config(dataset=dataset).__dict__, "seed": seed})
    clf.method = method or clf.method
    EvalConfig(method=clf.method)  # validates the name
    raw = load_splits(data_cfg, [split], option="--dataset PATH")[split]
    sample = prepare_split(raw, split, data_cfg, label_mapper(data_cfg, clf.label_words))
    if limit is not None:
        sample = sample.take(balanced_indices(sample.labels, limit, len(clf.label_words),
                                              np.random.default_rng(seed), what=f"--limit {limit}"))
    start = time.perf_counter()
    probs = clf.predict_proba(sample.texts)
    seconds = time.perf_counter() - start
    preds = decide(probs, clf.threshold)
    metrics = compute_metrics(sample.labels, preds, probs, clf.label_words, data_cfg.ordinal)
    metrics.update({"method": clf.method, "threshold": clf.threshold, "unparsed": int((preds == UNDECIDED).sum()),
                    "dataset": data_cfg.dataset, "split": split,
                    "dtype": clf.weights_dtype.removeprefix("torch."),
                    "precision": clf.precision, "cpu": this_cpu().to_dict(),
                    "seconds": round(seconds, 2),
                    "reviews_per_s": round(len(sample) / seconds, 2) if seconds > 0 else None})
    out = Path(output_dir) if output_dir else new_evaluation_dir(run_dir, split)

    def fill(tmp: Path) -> None:
        write_jsonl(tmp / PREDICTIONS, prediction_rows(sample, preds, probs, clf.label_words))
        write_json(tmp / METRICS, metrics)

    write_dir(out, fill)  # the folder appears whole, or not at all
    metrics["output_dir"] = str(out)
    return metrics


def new_evaluation_dir(run_dir: Path, split: str) -> Path:
    """``RUN/evaluations/SPLIT-TIMESTAMP``, plus a counter if taken: never another evaluation's folder."""
    stem = run_dir / EVALUATIONS / f"{split}-{datetime.now():%Y%m%d-%H%M%S}"
    out, n = stem, 1
    while out.exists():
        n += 1
        out = stem.with_name(f"{stem.name}-{n}")
    return out


PREVIEW_CHARS = 300


def preview(text: str) -> str:
    """A text as predictions.jsonl holds it: whole up to PREVIEW_CHARS characters, else cut with
    '...' (the row stays small; the id leads back to the whole text)."""
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 3] + "..."


def prediction_rows(sample, preds, probs, label_words) -> list[dict]:
    """predictions.jsonl: id, the text's ``preview``, gold and predicted label, the
    prediction's probability, all probabilities; ``pred`` and ``prob`` null when undecided."""
    rows = []
    for i, text in enumerate(sample.texts):
        p = int(preds[i])
        decided = p != UNDECIDED
        rows.append({"id": sample.ids[i], "text": preview(text),
                     "gold": label_words[sample.labels[i]],
                     "pred": label_words[p] if decided else None,
                     "prob": float(probs[i, p]) if decided else None,
                     "probs": [round(float(x), 6) if np.isfinite(x) else None for x in probs[i]]})
    return rows
