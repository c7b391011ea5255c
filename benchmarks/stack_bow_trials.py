"""Trials of the hybrid's bag-of-words part (word and character n-grams), judged on validation only.

For each candidate vectorizer (NB-weighted, logistic regression):
- accuracy and log-loss on a 2,500-review balanced sample carved from the pool (the train split
  less the protocol's validation and test rows), C chosen there (the same carve fit_tfidf uses);
- the stack with the best_recipe run's own validation probabilities: 5-fold cross-validated
  accuracy and log-loss of the combiner on the protocol's 200 validation reviews.
Never reads the test sample's labels.

    python benchmarks/stack_bow_trials.py runs/bench-quality/best_recipe --dataset ../shared/imdb \
        --out benchmarks/results/stack-bow-trials-cpu.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.base import clone
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by file path
from common import quality_samples  # noqa: E402
from sentiment_lora.baseline import NBScaler, tfidf_pipeline  # noqa: E402
from sentiment_lora.data import balanced_indices  # noqa: E402
from sentiment_lora.decision import log_loss, stack_features  # noqa: E402
from sentiment_lora.precision import this_cpu  # noqa: E402
from sentiment_lora.stack import COMBINER_CS, pool_sample, text_key  # noqa: E402


def words(ngrams: tuple[int, int]) -> TfidfVectorizer:
    """The stack's own word TF-IDF (baseline.tfidf_pipeline), with other n-gram lengths."""
    return clone(tfidf_pipeline(nb=False, C=1.0).named_steps["tfidf"]).set_params(ngram_range=ngrams)


def chars() -> TfidfVectorizer:
    """The character part of ``stack --baseline tfidf-nb-chars`` (baseline.tfidf_pipeline)."""
    union = tfidf_pipeline(nb=False, C=1.0, chars=True).named_steps["tfidf"]
    return clone(dict(union.transformer_list)["chars"])


def candidates():
    return {"word12": [words((1, 2))], "word13": [words((1, 3))],
            "word12+char25": [words((1, 2)), chars()], "word13+char25": [words((1, 3)), chars()]}


def stack_cv(llm_val, base_val, y, seed=42):
    feats = stack_features(llm_val, base_val)
    split = StratifiedKFold(5, shuffle=True, random_state=seed)
    best = None
    for c in COMBINER_CS:
        p = cross_val_predict(LogisticRegression(C=c, max_iter=5000), feats, y, cv=split, method="predict_proba")
        ll = log_loss(p, y)
        if best is None or ll < best[0]:
            best = (ll, float((p.argmax(1) == y).mean()), c)
    return {"cv_log_loss": round(best[0], 4), "cv_accuracy": best[1], "C": best[2]}


def samples(dataset: str):
    """The protocol's validation sample, the pool (train split less validation and test rows) cut
    into a fit part and a 2,500-review balanced held-out part (as ``fit_tfidf`` carves it)."""
    cfg, data = quality_samples(dataset)
    held_out = set(data.val.texts) | set(data.test.texts)
    pool, _ = pool_sample(cfg.data.dataset, cfg.data, cfg.prompt.label_words, held_out)
    held = balanced_indices(pool.labels, 2500, 2, np.random.default_rng(42), what="held-out sample")
    kept = set(held)
    return data.val, pool.take([i for i in range(len(pool)) if i not in kept]), pool.take(held)


def trial(vecs, fit, hold, val, llm_val) -> dict:
    """One vectorizer set: NB-weighted features, C chosen on the held-out part, then the model
    alone and stacked with the LLM on the validation sample."""
    started = time.perf_counter()
    X = sparse.hstack([v.fit_transform(fit.texts) for v in vecs]).tocsr()
    nb = NBScaler().fit(X, np.asarray(fit.labels))
    X, Xh, Xv = (nb.transform(m) for m in (X, *(sparse.hstack([v.transform(s.texts) for v in vecs]).tocsr()
                                                for s in (hold, val))))
    y_hold, y_val = np.asarray(hold.labels), np.asarray(val.labels)
    by_c = {}
    for C in (1.0, 4.0, 16.0, 64.0):
        lr = LogisticRegression(C=C, max_iter=2000, solver="liblinear", random_state=42).fit(X, fit.labels)
        ph = lr.predict_proba(Xh)
        by_c[C] = (lr, {"hold_accuracy": float((ph.argmax(1) == y_hold).mean()),
                        "hold_log_loss": round(log_loss(ph, y_hold), 4)})
    C = max(by_c, key=lambda c: (by_c[c][1]["hold_accuracy"], -abs(np.log(c))))
    pv = by_c[C][0].predict_proba(Xv)
    return {"features": X.shape[1], "C": C, "hold": {str(c): r for c, (_, r) in by_c.items()},
            "val_alone": {"accuracy": float((pv.argmax(1) == y_val).mean()), "log_loss": round(log_loss(pv, y_val), 4)},
            "stack_val": stack_cv(llm_val, pv, y_val), "seconds": round(time.perf_counter() - started, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a bench_quality.py best_recipe run folder (its llm_scores.json)")
    ap.add_argument("--dataset", default="stanfordnlp/imdb")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", action="append", help="run only this candidate (repeatable)")
    args = ap.parse_args()
    val, fit, hold = samples(args.dataset)
    run = Path(args.run)
    saved = json.loads((run / "llm_scores.json").read_text())["probs"]
    llm_val = np.array([saved[text_key(t)] for t in val.texts])
    spec = json.loads((run / "classifier.json").read_text())
    threshold = (spec.get("stack") or {}).get("llm_threshold", spec["threshold"])
    y_val = np.asarray(val.labels)
    results = {"cpu": this_cpu().to_dict(), "fit_rows": len(fit), "hold_rows": len(hold),
               "llm_alone_val": {"threshold": threshold,
                                 "accuracy": float(((llm_val[:, 1] >= threshold) == y_val).mean()),
                                 "log_loss": round(log_loss(llm_val, y_val), 4)},
               "candidates": {}}
    for name, vecs in candidates().items():
        if not args.only or name in args.only:
            results["candidates"][name] = row = trial(vecs, fit, hold, val, llm_val)
            print(name, json.dumps({k: v for k, v in row.items() if k != "hold"}), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
