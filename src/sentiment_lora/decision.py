"""The one rule that turns class probabilities into labels, and fitting its threshold.

No heavy imports: the server, the CLI and the baselines all decide through here."""

from __future__ import annotations

import numpy as np

UNDECIDED = -1
"""Label index of a row with no probabilities (NaN), e.g. a generated answer naming no label."""


def decide(probs, threshold: float = 0.5) -> np.ndarray:
    """Class index per row of ``probs`` (n, k): the second class when its probability reaches ``threshold``
    (two classes), else the most probable. A row holding NaN is ``UNDECIDED``, never silently class 0."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (n, k >= 2), got {probs.shape}")
    missing = np.isnan(probs).any(axis=1)
    if probs.shape[1] == 2:
        out = (np.nan_to_num(probs[:, 1], nan=0.0) >= threshold).astype(int)
    else:
        out = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
    out[missing] = UNDECIDED
    return out


def best_threshold(probs, labels) -> float:
    """Threshold on p(class 1) that maximises accuracy; ties go to the one nearest 0.5."""
    p = np.asarray(probs, dtype=float)[:, 1]
    y = np.asarray(labels)
    cuts = np.unique(p)
    candidates = np.concatenate([[0.5], (cuts[:-1] + cuts[1:]) / 2])
    candidates = candidates[(candidates > 0) & (candidates < 1)]
    pairs = np.stack([1 - p, p], axis=1)
    accs = np.array([(decide(pairs, t) == y).mean() for t in candidates])
    best = np.flatnonzero(accs == accs.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def decision_margin(probs, threshold: float = 0.5) -> np.ndarray:
    """How far each row is from deciding otherwise: |p(second) - threshold| for two classes,
    the gap between the two most probable classes beyond. A near-tie (a margin within float
    noise) may flip between two runs of the same model; that is not a different model."""
    probs = np.asarray(probs, dtype=float)
    if probs.shape[1] == 2:
        return np.abs(probs[:, 1] - threshold)
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise; scipy.special.softmax would cost every importer of this module scipy."""
    out = np.exp(logits - logits.max(axis=1, keepdims=True))
    return out / out.sum(axis=1, keepdims=True)


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """softmax(log p / T): above 1 softer, below 1 sharper; the ranking, so the top class, is unchanged."""
    return _softmax(np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)) / temperature)


def log_loss(probs, labels) -> float:
    """Mean negative log-likelihood of the gold labels."""
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=int)
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def fit_temperature(probs, labels) -> float:
    """Temperature scaling (Guo et al., 2017): the T minimising the validation log-loss of ``apply_temperature``."""
    from scipy.optimize import minimize_scalar

    probs = np.asarray(probs, dtype=float)
    keep = ~np.isnan(probs).any(axis=1)
    probs, y = probs[keep], np.asarray(labels, dtype=int)[keep]
    if len(y) == 0:
        return 1.0
    # Search log T, so T stays positive and 1/20 .. 20 is covered evenly.
    res = minimize_scalar(lambda t: log_loss(apply_temperature(probs, float(np.exp(t))), y), bounds=(-3.0, 3.0),
                          method="bounded")
    return float(np.exp(res.x))


def apply_bias(probs, bias) -> np.ndarray:
    """Probabilities with a per-class offset added to their logits: softmax(log p + b)."""
    return _softmax(np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)) + np.asarray(bias, dtype=float))


def fit_bias(probs, labels) -> np.ndarray:
    """Per-class logit offsets (the first fixed at 0) that minimise the validation log-loss: they
    undo a model's preference for some label words, as the threshold does for two classes."""
    from scipy.optimize import minimize

    probs = np.asarray(probs, dtype=float)
    keep = ~np.isnan(probs).any(axis=1)
    probs, y = probs[keep], np.asarray(labels, dtype=int)[keep]
    k = probs.shape[1]
    if len(y) == 0:
        return np.zeros(k)
    res = minimize(lambda b: log_loss(apply_bias(probs, np.concatenate([[0.0], b])), y), np.zeros(k - 1),
                   method="L-BFGS-B")
    return np.concatenate([[0.0], res.x])


def stack_features(*parts) -> np.ndarray:
    """What a stack's combiner reads of each model's probabilities (n, k): the log-odds for two
    classes, the centred log-probabilities beyond. Centring removes each row's normalising
    constant, which otherwise leaks into every class's score through the combiner's weights."""
    cols = []
    for probs in parts:
        logp = np.log(np.clip(np.asarray(probs, dtype=float), 1e-7, 1.0))
        cols.append(logp[:, 1:] - logp[:, :1] if logp.shape[1] == 2 else logp - logp.mean(axis=1, keepdims=True))
    return np.concatenate(cols, axis=1)


def stack_proba(features, coef, intercept) -> np.ndarray:
    """The combiner's probabilities: softmax(features @ coef.T + intercept), one row of coef per class."""
    return _softmax(np.asarray(features, dtype=float) @ np.asarray(coef, dtype=float).T
                    + np.asarray(intercept, dtype=float))
