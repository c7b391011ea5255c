"""``sentiment-lora stack``: combine a trained LLM classifier with a TF-IDF model.

A bag-of-words model and a label-token LLM make different mistakes: one counts words, the
other reads. A small logistic regression over both models' log-probabilities, fitted on the
run's validation sample only, takes the better of each. Its parts are written into the run
folder (the TF-IDF model as a skops file, the combiner's weights in ``classifier.json``), so
``SentimentClassifier``, ``evaluate``, ``predict`` and ``serve`` use the stack with no change.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import secrets
import time
from pathlib import Path

import numpy as np

from .bagofwords import BASELINES, baseline_problem
from .baseline import fit_tfidf, pick_c
from .classifier import SentimentClassifier, save_stack_model, write_classifier
from .config import DataConfig, load_config
from .data import DataBundle, Sample, label_mapper, load_splits, prepare_data, prepare_split
from .decision import decide, log_loss, stack_features, stack_proba
from .errors import UserError
from .evaluate import preview
from .integrity import json_digest, sha256_bytes
from .layout import CONFIG, LLM_SCORES, METRICS, PREDICTIONS, STACK_DIR
from .metrics import compute_metrics
from .spec import ClassifierSpec, StackSpec
from .storage import read_json, write_json

FOLDER = STACK_DIR
# A range wide enough for two to ten features and a few hundred validation rows.
COMBINER_CS = tuple(float(c) for c in np.logspace(-3, 3, 13))


def fit_combiner(features: np.ndarray, labels, classes: int, seed: int = 42) -> tuple[list, list, dict]:
    """Logistic regression over ``stack_features``, its C chosen by cross-validated log-loss on
    the rows given (the validation sample). Returns one coefficient row and intercept per class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    y = np.asarray(labels, dtype=int)
    if len(set(y.tolist())) < classes:
        raise UserError(f"the validation sample lacks some of the {classes} classes, so the combiner cannot "
                        f"learn them; train with a larger data.val_size")
    folds = int(min(5, np.bincount(y, minlength=classes).min()))
    scores = {}
    if folds >= 2:
        split = StratifiedKFold(folds, shuffle=True, random_state=seed)
        scores = {c: float(cross_val_score(LogisticRegression(C=c, max_iter=5000), features, y, cv=split,
                                           scoring="neg_log_loss").mean()) for c in COMBINER_CS}
    # Too few rows of some class to cross-validate: the default strength.
    c = pick_c(scores) if scores else 1.0
    lr = LogisticRegression(C=c, max_iter=5000).fit(features, y)
    coef, intercept = lr.coef_, lr.intercept_
    if classes == 2:  # sklearn's one row scores the second class against the first
        coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
        intercept = np.array([0.0, intercept[0]])
    return coef.tolist(), intercept.tolist(), {"C": c, "cv_folds": folds}


def pool_sample(pool: str, data_cfg: DataConfig, label_words: list[str], held: set[str]) -> tuple[Sample, int]:
    """The train split of ``pool``, read like the run's data, less any text in ``held`` (the
    run's validation and test samples: the combiner must see the baseline's honest errors)."""
    cfg = dataclasses.replace(data_cfg, dataset=pool, val_split=None)
    raw = load_splits(cfg, [cfg.train_split], option="--pool PATH")
    rows = prepare_split(raw[cfg.train_split], cfg.train_split, cfg, label_mapper(cfg, label_words))
    keep = [i for i, t in enumerate(rows.texts) if t not in held]
    return rows.take(keep), len(rows) - len(keep)


SCORES_FORMAT = "sentiment-lora-llm-scores/1"


def text_key(text: str) -> str:
    """The key of a text's saved probabilities: sha256 of the text exactly as it was scored."""
    return sha256_bytes(text.encode("utf-8", "surrogatepass"))


def llm_identity(spec: ClassifierSpec) -> str:
    """What decides the LLM's own probabilities: the spec (model files' sha256, base model
    fingerprint, prompt, temperature, batch shape) less a stack on top of it, which changes the
    threshold and adds its own file but not the LLM's numbers. The precision scored in is
    recorded and matched on its own: a stack may be fitted in another one. The data section is
    left out too: each row is keyed by its text's own hash, and where the dataset lives (as
    typed at training, or resolved from the folder once saved) changes no probability."""
    d = spec.to_dict()
    for key in ("checksum", "sections", "stack", "threshold", "precision", "data"):
        d.pop(key, None)
    if spec.stack is not None:
        d["files"].pop(spec.stack.model_file, None)
    return json_digest(d)


def save_scores(run_dir: Path, spec: ClassifierSpec, precision: str, device_type: str, samples) -> None:
    """Write llm_scores.json: the LLM's probabilities (as ``proba_of_prompts`` gives them) of each
    ``(texts, probs)`` sample, with what scored them. A row that is not finite is left out (and
    scored again when needed)."""
    probs = {text_key(t): [float(x) for x in row]
             for texts, rows in samples for t, row in zip(texts, np.asarray(rows, dtype=float))
             if np.isfinite(row).all()}
    write_json(run_dir / LLM_SCORES, {"format": SCORES_FORMAT, "classifier": llm_identity(spec),
                                      "precision": precision, "device": device_type, "probs": probs})


def saved_scores(run_dir: Path, spec: ClassifierSpec, precision: str, device_type: str) -> dict[str, list]:
    """The saved probabilities by text key when they come from this very classifier (its
    ``llm_identity``), scored in ``precision`` on this kind of device; else none: anything else
    would be stale numbers."""
    try:
        saved = read_json(run_dir / LLM_SCORES)
    except (OSError, ValueError):
        return {}
    want = {"format": SCORES_FORMAT, "classifier": llm_identity(spec), "precision": precision, "device": device_type}
    if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in want.items()):
        return {}
    probs = saved.get("probs")
    return probs if isinstance(probs, dict) else {}


def _summary(m: dict) -> dict:
    keys = ("n", "accuracy", "accuracy_ci95", "macro_f1", "roc_auc", "ece", "log_loss")
    return {k: m[k] for k in keys if k in m}


def stack(run_dir: str | Path, baseline: str = "tfidf", pool: str | None = None, device: str = "auto",
          llm_probs: tuple[np.ndarray, np.ndarray] | None = None, data: DataBundle | None = None,
          precision: str | None = None, dataset: str | None = None) -> dict:
    """Fit a stack for the classifier in ``run_dir`` and write it there; returns its metrics
    section (the stack and each part on the run's test sample).

    ``pool``: None trains the TF-IDF model on the run's training sample; ``"all"`` on the whole
    train split of the run's dataset; anything else names a dataset whose train split to use.
    Either way the run's validation and test rows are left out.

    ``llm_probs``: the classifier's probabilities on the run's validation and test samples, in
    sample order, when the caller has them (``train`` just computed them); else they are scored
    here. ``data``: the run's samples as training drew them; else drawn again from its
    config.yaml. ``dataset``: where the run's dataset is now, when the path it recorded no longer
    resolves (a local dataset is recorded relative to the run folder, which may have moved)."""
    run_dir = Path(run_dir)
    spec = ClassifierSpec.load(run_dir)
    cfg = _stackable(run_dir, spec, baseline, dataset)
    words = spec.label_words
    started = time.perf_counter()
    data = data or prepare_data(cfg.data, words, option="--dataset PATH")  # the run's own seeded samples
    if dataset is not None:
        check_test_sample(run_dir, data, dataset)
    if pool is None:
        train, dropped = data.train, 0
    else:
        source = cfg.data.dataset if pool == "all" else pool
        train, dropped = pool_sample(source, cfg.data, words, set(data.val.texts) | set(data.test.texts))
    bow = BASELINES[baseline]
    text_model, chosen = fit_tfidf(train, bow.nb, seed=cfg.data.seed, classes=len(words), chars=bow.chars)
    llm, spec.precision, reused = _llm_probs(run_dir, device, data, llm_probs, precision, spec)
    base = tuple(text_model.predict_proba(s.texts) for s in (data.val, data.test))
    coef, intercept, combiner = fit_combiner(stack_features(llm[0], base[0]), data.val.labels, len(words),
                                             cfg.data.seed)
    llm_threshold = spec.stack.llm_threshold if spec.stack else spec.threshold
    val, test = _figures(data, llm, base, coef, intercept, llm_threshold, words, cfg.data.ordinal)
    # The new skops file gets a fresh name, so the folder's current classifier.json stays whole
    # until the new one replaces it; older stack files go after that.
    name = f"{FOLDER}/{baseline}-{secrets.token_hex(4)}.skops"
    save_stack_model(text_model, run_dir / name)
    new = dataclasses.replace(spec, threshold=0.5, stack=StackSpec(
        baseline=baseline, model_file=name, coef=coef, intercept=intercept, pool=pool, train_rows=len(train),
        llm_threshold=llm_threshold))
    section = {"baseline": baseline, "pool": pool, "baseline_train_rows": len(train),
               "pool_rows_dropped_as_val_or_test": dropped, "baseline_C": chosen["C"], "combiner": combiner,
               "val_n": len(data.val), "llm_rows_reused": reused, "val": val, "test": test,
               "wall_seconds": round(time.perf_counter() - started, 1)}
    write_classifier(run_dir, new, extras=lambda folder: _write_metrics(folder, section))
    _remove_stale(run_dir, keep=name)
    return section


def check_test_sample(run_dir: Path, data: DataBundle, dataset: str) -> None:
    """A dataset named by --dataset must give the run's own test sample (its predictions file holds
    it): another copy or version draws other rows, some perhaps among those the LLM trained on."""
    path = run_dir / PREDICTIONS
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as f:
        rows = ((r["id"], r["text"]) for r in map(json.loads, filter(str.strip, f)))
        same = all(a == b for a, b in itertools.zip_longest(rows, zip(data.test.ids, map(preview, data.test.texts))))
    if not same:
        raise UserError(f"--dataset {dataset!r} does not give the test sample this run was tested on "
                        f"({PREDICTIONS}); pass the dataset it was trained on")


def _stackable(run_dir: Path, spec: ClassifierSpec, baseline: str, dataset: str | None = None):
    """The run's config, once the classifier is known to be one a stack can be fitted for and its
    dataset is found (``dataset``, given, replaces the recorded one)."""
    problem = baseline_problem(baseline, len(spec.label_words))
    if problem:
        raise UserError(f"--baseline {problem}")
    if spec.method == "generate":
        raise UserError("stacking needs the LLM's label probabilities; this classifier uses eval.method generate, "
                        "whose answers are one-hot: train it with eval.method logits")
    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{str(run_dir)!r} has no config.yaml, so its validation sample cannot be drawn again; "
                        f"stack a training run folder, then export it")
    cfg = load_config(run_dir / CONFIG)
    if spec.data.get("dataset"):  # config.yaml holds it as typed, relative to training's shell folder;
        # the spec resolves it from the run folder, so the samples are drawn again from anywhere
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset=spec.data["dataset"]))
    if dataset is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset=dataset))
    if not cfg.data.val_size and not cfg.data.val_split:
        raise UserError("the combiner is fitted on the run's validation sample and this run has none; train with "
                        "data.val_size above 0 (or data.val_split)")
    return cfg


def _llm_probs(run_dir: Path, device: str, data: DataBundle, given, precision: str | None, spec: ClassifierSpec):
    """(the LLM's own probabilities on the validation and test samples, the precision they were
    scored in, how many rows were reused from llm_scores.json): proba_of_prompts never applies a
    stack, as serving gives them. The combiner is fitted in that precision, so the classifier
    records it."""
    reused, saved = 0, spec.precision
    if given is None:
        given, saved, reused = _saved_or_scored(run_dir, spec, device, precision, (data.val.texts, data.test.texts))
    llm_val, llm_test = given
    if (len(llm_val), len(llm_test)) != (len(data.val), len(data.test)):
        raise ValueError(f"llm_probs has {len(llm_val)} and {len(llm_test)} rows; the run's validation and test "
                         f"samples have {len(data.val)} and {len(data.test)}")
    return (llm_val, llm_test), saved, reused


def _saved_or_scored(run_dir: Path, spec: ClassifierSpec, device: str, precision: str | None, samples):
    """Each sample's probabilities: those saved in llm_scores.json where they are this classifier's,
    in the precision and on the kind of device it scores in now, for exactly these texts; the rest
    scored here, the model loaded only if some are left. What was scored is saved for next time."""
    from .model import pick_device
    from .precision import scoring_precision

    device_type = pick_device(device).type
    chosen = scoring_precision(precision, device_type, "auto", spec.precision)
    saved = saved_scores(run_dir, spec, chosen, device_type)
    classes = len(spec.label_words)
    found = [[_row(saved.get(text_key(t)), classes) for t in texts] for texts in samples]
    reused = sum(row is not None for rows in found for row in rows)
    if reused < sum(map(len, samples)):
        clf = SentimentClassifier.load(run_dir, device=device, precision=precision)
        for texts, rows in zip(samples, found):
            todo = [i for i, row in enumerate(rows) if row is None]
            for i, row in zip(todo, clf.proba_of_prompts(clf.encode([texts[i] for i in todo])) if todo else ()):
                rows[i] = row
        chosen = clf.precision
        save_scores(run_dir, spec, chosen, device_type, zip(samples, found))
    return tuple(np.array(rows, dtype=float).reshape(len(rows), classes) for rows in found), chosen, reused


def _row(value, classes: int) -> list[float] | None:
    """A saved row of ``classes`` finite probabilities, else None (scored again)."""
    if not isinstance(value, list) or len(value) != classes:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in value):
        return None
    return [float(x) for x in value]


def _figures(data: DataBundle, llm, base, coef, intercept, llm_threshold: float, words, ordinal) -> tuple[dict, dict]:
    """Validation and test figures of the stack and of each of its parts."""
    stacked = [stack_proba(stack_features(p, b), coef, intercept) for p, b in zip(llm, base)]
    parts = {"stack": (stacked, 0.5), "llm": (llm, llm_threshold), "baseline": (base, 0.5)}
    test = {name: _summary(compute_metrics(data.test.labels, decide(p[1], t), p[1], words, ordinal))
            for name, (p, t) in parts.items()}
    for name, (p, _) in parts.items():
        test[name]["log_loss"] = round(log_loss(p[1], data.test.labels), 4)
    val = {name: {"accuracy": float((decide(p[0], t) == np.asarray(data.val.labels)).mean()),
                  "log_loss": round(log_loss(p[0], data.val.labels), 4)} for name, (p, t) in parts.items()}
    return val, test


def unstack(run_dir: str | Path) -> None:
    """Back to the LLM alone: its own threshold again, the stack's files and metrics removed."""
    run_dir = Path(run_dir)
    spec = ClassifierSpec.load(run_dir)
    if spec.stack is None:
        raise UserError(f"{str(run_dir)!r} has no stack to remove")
    new = dataclasses.replace(spec, threshold=spec.stack.llm_threshold, stack=None)
    write_classifier(run_dir, new, extras=lambda folder: _write_metrics(folder, None))
    _remove_stale(run_dir, keep=None)


def _remove_stale(run_dir: Path, keep: str | None) -> None:
    folder = run_dir / FOLDER
    for path in folder.glob("*.skops") if folder.is_dir() else ():
        if path.relative_to(run_dir).as_posix() != keep:
            path.unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _write_metrics(run_dir: Path, section: dict | None) -> None:
    path = run_dir / METRICS
    if not path.is_file():  # an export without metrics: classifier.json holds the stack
        return
    metrics = read_json(path)
    metrics.pop("stack", None)
    if section is not None:
        metrics["stack"] = section
    write_json(path, metrics)
