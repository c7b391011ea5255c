"""Classification metrics and confidence intervals (scikit-learn underneath)."""

from __future__ import annotations

import math

import numpy as np

# scikit-learn is imported where a metric is computed, not here: its import (SciPy and pandas come
# with it) is slow, and a command that fails or is stopped before its metrics should not wait on it.


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; well-behaved near 0 and 1."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def reliability(labels: list[int], probs: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-width bins of the predicted probability against the observed frequency: p(class 1)
    and how often class 1 occurs for two classes, else the top class's probability and how often it is right."""
    y = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if probs.shape[1] == 2:
        conf, hit = probs[:, 1], (y == 1)
    else:
        conf, hit = probs.max(axis=1), (probs.argmax(axis=1) == y)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return [{"low": b / bins, "high": (b + 1) / bins, "n": int((which == b).sum()),
             "mean_prob": float(conf[which == b].mean()) if (which == b).any() else None,
             "frequency": float(hit[which == b].mean()) if (which == b).any() else None}
            for b in range(bins)]


def expected_calibration_error(labels: list[int], probs: np.ndarray, bins: int = 10) -> float:
    """ECE: the mean |predicted probability - observed frequency| over bins, weighted by size."""
    table = reliability(labels, probs, bins)
    n = sum(b["n"] for b in table)
    return float(sum(b["n"] * abs(b["mean_prob"] - b["frequency"]) for b in table if b["n"]) / n) if n else 0.0


def mean_class_error(y: np.ndarray, yhat: np.ndarray) -> float | None:
    """Ordinal labels (star ratings): the mean distance in classes from gold, over decided rows."""
    decided = yhat >= 0
    return float(np.abs(y[decided] - yhat[decided]).mean()) if decided.any() else None


def roc_auc(y: np.ndarray, probs: np.ndarray, classes: list[int]) -> tuple[float | None, str | None]:
    """ROC-AUC (one-vs-rest beyond two classes), or None and the reason it is undefined."""
    from sklearn.metrics import roc_auc_score

    missing = [c for c in classes if not (y == c).any()]
    if missing:  # sklearn would return NaN (not JSON) or raise
        return None, f"undefined: no example of class {missing[0]} among the {len(y)} labels"
    auc = float(roc_auc_score(y, probs[:, 1]) if len(classes) == 2
                else roc_auc_score(y, probs, multi_class="ovr", labels=classes))
    return (auc, None) if math.isfinite(auc) else (None, "undefined for these labels")


def compute_metrics(labels: list[int], preds: list[int], probs: np.ndarray, label_words: list[str],
                    ordinal: bool = False) -> dict:
    """Accuracy (95% CI), per-class precision/recall/F1, macro F1, ROC-AUC, ECE (reliability table), confusions."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y = np.asarray(labels, dtype=int)
    yhat = np.asarray(preds, dtype=int)  # UNDECIDED (-1) rows count as wrong for every class
    probs = np.asarray(probs, dtype=float)
    # Rows without probabilities (generate answers naming no label) rank as uniform guesses.
    probs = np.where(np.isnan(probs).any(axis=1, keepdims=True), 1.0 / probs.shape[1], probs)
    classes = list(range(len(label_words)))
    prec, rec, f1, support = precision_recall_fscore_support(y, yhat, labels=classes, zero_division=0)
    correct = int((y == yhat).sum())
    low, high = wilson_interval(correct, len(y))
    auc, auc_note = roc_auc(y, probs, classes)
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, yhat)) if len(y) else 0.0,
        "accuracy_ci95": [low, high],
        "macro_f1": float(f1_score(y, yhat, labels=classes, average="macro", zero_division=0)),
        "roc_auc": auc,
        **({"roc_auc_note": auc_note} if auc_note else {}),
        "ece": expected_calibration_error(y, probs) if len(y) else None,
        "reliability": reliability(y, probs) if len(y) else [],
        "per_class": {
            word: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, word in enumerate(label_words)
        },
        "confusion_matrix": confusion_matrix(y, yhat, labels=classes).tolist(),
        **({"mae_classes": mean_class_error(y, yhat)} if ordinal else {}),
        "labels": list(label_words),
    }
