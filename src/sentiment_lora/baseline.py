"""Baselines a fine-tuned LLM has to beat: TF-IDF + logistic regression, and the zero-shot base model.

Both write the same ``metrics.json`` and ``predictions.jsonl`` as a fine-tuned run, for comparison as is.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from .bagofwords import BagOfWords
from .config import Config, DataConfig
from .data import Sample, balanced_indices, draw, label_mapper, load_splits, prepare_split, stratified_indices, unseen
from .decision import apply_bias, best_threshold, decide, fit_bias
from .errors import UserError
from .evaluate import prediction_rows
from .layout import CONFIG, METRICS, PREDICTIONS
from .metrics import compute_metrics
from .storage import check_output_folder, write_dir, write_json, write_jsonl

# Wide enough for both ends: IMDB's 25k long reviews want weak regularisation, SST-5's short
# sentences strong (C=4 was the grid's smallest value and won there).
C_GRID = (0.5, 1.0, 2.0, 4.0, 16.0, 64.0)


class NBScaler(BaseEstimator, TransformerMixin):
    """Scale each feature by its naive-Bayes log-count ratio (Wang & Manning's NB-SVM idea):
    words that separate the classes get large weights before the linear model sees them."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, X, y):
        y = np.asarray(y)
        if set(np.unique(y)) - {0, 1}:  # one log-count ratio per feature is a two-class idea
            raise UserError("--nb (NB-weighted TF-IDF) handles two classes only; drop --nb for this dataset")
        binary = (X > 0).astype(np.float64)
        p = self.alpha + np.asarray(binary[y == 1].sum(axis=0)).ravel()
        q = self.alpha + np.asarray(binary[y == 0].sum(axis=0)).ravel()
        self.ratio_ = np.log((p / p.sum()) / (q / q.sum()))
        return self

    def transform(self, X):
        return X @ sparse.diags(self.ratio_)


def tfidf_pipeline(nb: bool, C: float, seed: int = 42, classes: int = 2, chars: bool = False) -> Pipeline:
    """Word unigrams + bigrams, sublinear TF-IDF, logistic regression (optionally NB-weighted, and
    with character 2-5-grams beside the words): liblinear for two classes, as the IMDB presets use;
    multinomial lbfgs beyond (liblinear is binary)."""
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_df=0.95, sublinear_tf=True, strip_accents="unicode",
                            token_pattern=r"(?u)\b\w[\w']*\b|[!?]")
    if chars:  # char_wb: n-grams inside word boundaries, so punctuation runs and spacing add no noise
        words = FeatureUnion([("words", words), ("chars", clone(words).set_params(
            analyzer="char_wb", ngram_range=(2, 5), token_pattern=None))])
    steps = [("tfidf", words)]
    if nb:
        steps.append(("nb", NBScaler()))
    solver = "liblinear" if classes == 2 else "lbfgs"
    steps.append(("lr", LogisticRegression(C=C, max_iter=2000, solver=solver, random_state=seed)))
    return Pipeline(steps)


# Below this many held-out rows per class a carved validation sample cannot tell the C values
# apart (one row moves its accuracy more than the grid's differences), or is empty: C is then
# chosen by stratified cross-validation over all of train.
MIN_HELD_OUT_PER_CLASS = 10
CV_FOLDS = 5


def fit_tfidf(train: Sample, nb: bool, val_size: int = 2500, seed: int = 42, classes: int = 2,
              val: Sample | None = None, chars: bool = False) -> tuple[Pipeline, dict]:
    """Choose C on validation (the dataset's own split, else a sample carved from train: balanced for two
    classes, stratified beyond; on small data, cross-validation), then refit on all of train."""
    make = functools.partial(tfidf_pipeline, nb, seed=seed, classes=classes, chars=chars)
    fit_part = train
    if val is None:
        val_size = min(val_size, len(train) // 5)
        if val_size < MIN_HELD_OUT_PER_CLASS * classes:
            return _choose_c_by_cv(train, make, seed, classes)
        pick = balanced_indices if classes == 2 else stratified_indices
        val_idx = pick(train.labels, val_size, classes, np.random.default_rng(seed), what="TF-IDF validation sample")
        held = set(val_idx)
        fit_part, val = train.take([i for i in range(len(train)) if i not in held]), train.take(val_idx)
    model, best, scores = _choose_c(train, [(fit_part, val)], make)
    return model, {"C": best, "val_accuracy_by_C": scores, "val_size": len(val)}


def pick_c(scores: dict[float, float]) -> float:
    """The C with the best score; among equals the one nearest scikit-learn's default, C=1."""
    return max(scores, key=lambda c: (scores[c], -abs(np.log(c))))


def fit_pipeline(model: Pipeline, texts: list[str], labels: list[int], what: str = "training texts") -> Pipeline:
    """``model.fit``; a vocabulary left empty by pruning (min_df=2 on a few short texts) is a one-line error."""
    try:
        return model.fit(texts, labels)
    except ValueError:
        try:
            clone(model.named_steps["tfidf"]).fit(texts)
        except ValueError:
            raise UserError(f"the TF-IDF baseline found no word in 2 or more of the {len(texts)} {what} (its "
                            f"vocabulary keeps only those); give it more training rows") from None
        raise


def _choose_c(train: Sample, splits: list[tuple[Sample, Sample]], make, what: str = "training texts"
              ) -> tuple[Pipeline, float, dict[str, float]]:
    """The C of C_GRID with the best accuracy over the held parts of ``splits`` (fit part, held
    part), the model ``make(C)`` refitted with it on all of ``train``, and each C's accuracy."""
    scores = {}
    for C in C_GRID:
        hits = []
        for part, held in splits:
            model = fit_pipeline(make(C), part.texts, part.labels, what)
            hits.append(model.predict(held.texts) == np.asarray(held.labels))
        scores[C] = float(np.concatenate(hits).mean())
    best = pick_c(scores)
    model = fit_pipeline(make(best), train.texts, train.labels)
    return model, best, {str(k): v for k, v in scores.items()}


def _choose_c_by_cv(train: Sample, make, seed: int, classes: int) -> tuple[Pipeline, dict]:
    """C by stratified k-fold accuracy; folds (up to CV_FOLDS) as the smallest class has rows, so each holds all."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(np.asarray(train.labels, dtype=int), minlength=classes)
    if counts.min() < 2:
        raise UserError(f"the TF-IDF baseline needs at least 2 training rows of every class to choose its C "
                        f"({2 * classes} rows in all); class {int(counts.argmin())} has {int(counts.min())}")
    folds = StratifiedKFold(n_splits=min(CV_FOLDS, int(counts.min())), shuffle=True, random_state=seed)
    splits = [(train.take(f), train.take(v)) for f, v in folds.split(np.zeros(len(train)), train.labels)]
    model, best, scores = _choose_c(train, splits, make, "training texts of a cross-validation fold")
    return model, {"C": best, "cv_accuracy_by_C": scores, "cv_folds": len(splits)}


def run_tfidf(data: DataConfig | str, output_dir: str | Path, nb: bool = False, seed: int = 42,
              label_words: tuple[str, ...] | list[str] = ("Negative", "Positive"),
              train_size: int | None = None, chars: bool = False) -> dict:
    """Train on the whole train split, or a seeded sample of ``train_size`` rows drawn by
    ``data.draw`` (the config's sampling and seed); score the test split less the rows also in the
    whole train split (as every run does); write metrics.json. ``data``: a dataset path or Hub id,
    or a DataConfig."""
    out = Path(output_dir)
    check_output_folder(out, "output folder")
    cfg = data if isinstance(data, DataConfig) else DataConfig(dataset=data)
    words = list(label_words)
    started = time.perf_counter()
    splits = [cfg.train_split, cfg.test_split] + ([cfg.val_split] if cfg.val_split else [])
    raw = load_splits(cfg, splits)
    to_class = label_mapper(cfg, words)
    train_all, test_all = (prepare_split(raw[s], s, cfg, to_class) for s in (cfg.train_split, cfg.test_split))
    test = unseen(test_all, train_all)
    val = unseen(prepare_split(raw[cfg.val_split], cfg.val_split, cfg, to_class), train_all) if cfg.val_split else None
    train = train_all if train_size is None else train_all.take(
        draw(cfg, train_all.labels, train_size, len(words), np.random.default_rng(cfg.seed), what="train sample"))
    model, chosen = fit_tfidf(train, nb, seed=seed, classes=len(words), val=val, chars=chars)
    train_seconds = time.perf_counter() - started
    probs = model.predict_proba(test.texts)
    preds = decide(probs)
    metrics = compute_metrics(test.labels, preds, probs, words, cfg.ordinal)
    metrics.update({"method": f"{BagOfWords(nb, chars).name}-logreg", "dataset": cfg.dataset,
                    "split": cfg.test_split, "threshold": 0.5, "train_rows": len(train), "train_size": train_size,
                    "test_rows_in_train_dropped": len(test_all) - len(test), **chosen,
                    "features": len(model.named_steps["tfidf"].get_feature_names_out()),
                    "train_seconds": round(train_seconds, 1),
                    "wall_seconds": round(time.perf_counter() - started, 1)})
    write_dir(out, lambda tmp: (write_jsonl(tmp / PREDICTIONS, prediction_rows(test, preds, probs, words)),
                                write_json(tmp / METRICS, metrics)))
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
    """Score the config's validation and test samples with the base model, calibrated on validation (a small
    model often prefers one label): the threshold for two classes, per-class logit offsets beyond."""
    from .data import prepare_data

    out = Path(output_dir)
    check_output_folder(out, "output folder")
    if not cfg.data.val_size and not cfg.data.val_split:
        raise UserError("the zero-shot baseline calibrates on validation; set data.val_size above 0 or data.val_split")
    started = time.perf_counter()
    words = cfg.prompt.label_words
    data = prepare_data(cfg.data, words)
    val_probs, raw = zero_shot_probs(cfg, [data.val, data.test])
    if len(words) == 2:
        threshold, bias, test_probs = best_threshold(val_probs, data.val.labels), None, raw
    else:
        bias = fit_bias(val_probs, data.val.labels)
        threshold, test_probs = 0.5, apply_bias(raw, bias)
    preds = decide(test_probs, threshold)
    metrics = compute_metrics(data.test.labels, preds, test_probs, words, cfg.data.ordinal)
    metrics.update({"method": "zero-shot", "model": cfg.model.name_or_path, "threshold": threshold,
                    **({"label_bias": [round(float(b), 4) for b in bias]} if bias is not None else {}),
                    "accuracy_uncalibrated": float((decide(raw, 0.5) == np.asarray(data.test.labels)).mean()),
                    "data": data.stats, "wall_seconds": round(time.perf_counter() - started, 1)})
    write_dir(out, lambda tmp: (write_jsonl(tmp / PREDICTIONS, prediction_rows(data.test, preds, test_probs,
                                                                                      words)),
                                write_json(tmp / METRICS, metrics), cfg.save(tmp / CONFIG)))
    metrics["output_dir"] = str(out)
    return metrics
