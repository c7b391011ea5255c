"""Baselines a fine-tuned LLM has to beat: TF-IDF + logistic regression, and the zero-shot base model.

Both write the same ``metrics.json`` (and ``predictions.jsonl``) as a fine-tuned run, so
their numbers sit beside each other without conversion.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from .config import Config
from .data import Sample, balanced_indices, load_full
from .decision import best_threshold, decide
from .errors import UserError
from .evaluate import prediction_rows
from .metrics import compute_metrics
from .storage import check_output_folder, write_dir, write_json, write_jsonl

C_GRID = (4.0, 16.0, 64.0)


class NBScaler(BaseEstimator, TransformerMixin):
    """Scale each feature by its naive-Bayes log-count ratio (Wang & Manning's NB-SVM idea):
    words that separate the classes get large weights before the linear model sees them."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, X, y):
        y = np.asarray(y)
        if set(np.unique(y)) - {0, 1}:
            raise UserError("the NB-weighted TF-IDF baseline handles two classes only")
        binary = (X > 0).astype(np.float64)
        p = self.alpha + np.asarray(binary[y == 1].sum(axis=0)).ravel()
        q = self.alpha + np.asarray(binary[y == 0].sum(axis=0)).ravel()
        self.ratio_ = np.log((p / p.sum()) / (q / q.sum()))
        return self

    def transform(self, X):
        return X @ sparse.diags(self.ratio_)


def tfidf_pipeline(nb: bool, C: float, seed: int = 42) -> Pipeline:
    """Word unigrams + bigrams, sublinear TF-IDF, logistic regression (optionally NB-weighted)."""
    steps = [("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_df=0.95, sublinear_tf=True,
                                       strip_accents="unicode", token_pattern=r"(?u)\b\w[\w']*\b|[!?]"))]
    if nb:
        steps.append(("nb", NBScaler()))
    steps.append(("lr", LogisticRegression(C=C, max_iter=2000, solver="liblinear", random_state=seed)))
    return Pipeline(steps)


def fit_tfidf(train: Sample, nb: bool, val_size: int = 2500, seed: int = 42) -> tuple[Pipeline, dict]:
    """Choose C on a balanced validation sample carved from train, then refit on all of train."""
    rng = np.random.default_rng(seed)
    val_size = min(val_size, len(train) // 5)
    val_idx = balanced_indices(train.labels, val_size, 2, rng, what="TF-IDF validation sample")
    held = set(val_idx)
    fit_idx = [i for i in range(len(train)) if i not in held]
    fit_part, val_part = train.take(fit_idx), train.take(val_idx)
    scores = {}
    for C in C_GRID:
        model = tfidf_pipeline(nb, C, seed).fit(fit_part.texts, fit_part.labels)
        scores[C] = float((model.predict(val_part.texts) == np.asarray(val_part.labels)).mean())
    best = max(C_GRID, key=lambda c: (scores[c], -abs(np.log(c))))
    model = tfidf_pipeline(nb, best, seed).fit(train.texts, train.labels)
    return model, {"C": best, "val_accuracy_by_C": {str(k): v for k, v in scores.items()}, "val_size": val_size}


def run_tfidf(dataset: str, output_dir: str | Path, nb: bool = False, seed: int = 42,
              label_words: tuple[str, ...] = ("Negative", "Positive")) -> dict:
    """Train on the whole train split, score the whole test split, write metrics.json."""
    out = Path(output_dir)
    check_output_folder(out, "output folder")
    words = list(label_words)
    started = time.perf_counter()
    data = load_full(dataset, words)
    model, chosen = fit_tfidf(data["train"], nb, seed=seed)
    train_seconds = time.perf_counter() - started
    probs = model.predict_proba(data["test"].texts)
    preds = decide(probs)
    metrics = compute_metrics(data["test"].labels, preds, probs, words)
    metrics.update({"method": "tfidf-nb-logreg" if nb else "tfidf-logreg", "dataset": dataset, "split": "test",
                    "threshold": 0.5, "train_rows": len(data["train"]), **chosen,
                    "features": len(model.named_steps["tfidf"].vocabulary_),
                    "train_seconds": round(train_seconds, 1),
                    "wall_seconds": round(time.perf_counter() - started, 1)})
    write_dir(out, lambda tmp: (write_jsonl(tmp / "predictions.jsonl", prediction_rows(data["test"], preds, probs,
                                                                                      words)),
                                write_json(tmp / "metrics.json", metrics)))
    metrics["output_dir"] = str(out)
    return metrics


def zero_shot_probs(cfg: Config, samples: list[Sample]) -> list[np.ndarray]:
    """The base model without an adapter, label-token scoring, one probability array per sample."""
    from .model import load_base_model, load_tokenizer, pick_device, pick_dtype
    from .prompt import Prompt
    from .scoring import score

    device = pick_device(cfg.model.device)
    tok = load_tokenizer(cfg.model)
    prompt = Prompt(tok, cfg.prompt)
    model = load_base_model(cfg.model, device, pick_dtype(cfg.model.dtype, device), tok.pad_token_id)
    return [score(model, prompt.encode(s.texts).input_ids, prompt.label_token_ids, tok.pad_token_id,
                  cfg.eval.batch_size, progress=name, max_tokens=cfg.eval.max_batch_tokens)
            for name, s in zip(("validate", "test"), samples)]


def run_zero_shot(cfg: Config, output_dir: str | Path) -> dict:
    """Score the config's validation and test samples with the base model; the threshold is
    calibrated on validation (uncalibrated, a small model often prefers one label)."""
    from .data import prepare_data

    out = Path(output_dir)
    check_output_folder(out, "output folder")
    if not cfg.data.val_size:
        raise UserError("the zero-shot baseline calibrates its threshold on validation; set data.val_size above 0")
    started = time.perf_counter()
    words = cfg.prompt.label_words
    data = prepare_data(cfg.data, words)
    val_probs, test_probs = zero_shot_probs(cfg, [data.val, data.test])
    threshold = best_threshold(val_probs, data.val.labels) if len(words) == 2 else 0.5
    preds = decide(test_probs, threshold)
    metrics = compute_metrics(data.test.labels, preds, test_probs, words)
    plain = decide(test_probs, 0.5)
    metrics.update({"method": "zero-shot", "model": cfg.model.name_or_path, "threshold": threshold,
                    "accuracy_uncalibrated": float((plain == np.asarray(data.test.labels)).mean()),
                    "data": data.stats, "wall_seconds": round(time.perf_counter() - started, 1)})
    write_dir(out, lambda tmp: (write_jsonl(tmp / "predictions.jsonl", prediction_rows(data.test, preds, test_probs,
                                                                                      words)),
                                write_json(tmp / "metrics.json", metrics), cfg.save(tmp / "config.yaml")))
    metrics["output_dir"] = str(out)
    return metrics
