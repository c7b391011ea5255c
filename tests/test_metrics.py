import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from sentiment_lora.decision import UNDECIDED, best_threshold, decide
from sentiment_lora.metrics import compute_metrics, wilson_interval


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    yhat = decide(probs, 0.5)
    m = compute_metrics(y.tolist(), yhat.tolist(), probs, ["Negative", "Positive"])
    prec, rec, f1, sup = precision_recall_fscore_support(y, yhat)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, yhat))
    assert m["macro_f1"] == pytest.approx(f1_score(y, yhat, average="macro"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["confusion_matrix"] == confusion_matrix(y, yhat).tolist()
    for i, word in enumerate(["Negative", "Positive"]):
        assert m["per_class"][word]["precision"] == pytest.approx(prec[i])
        assert m["per_class"][word]["recall"] == pytest.approx(rec[i])
        assert m["per_class"][word]["f1"] == pytest.approx(f1[i])
        assert m["per_class"][word]["support"] == sup[i]
    assert m["n"] == 200


def test_wilson_interval_known_case():
    # 81 of 100: the Wilson 95% interval is [0.7222, 0.8749] (Newcombe 1998, method 3).
    low, high = wilson_interval(81, 100)
    assert low == pytest.approx(0.7222, abs=1e-4) and high == pytest.approx(0.8749, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_threshold_and_calibration():
    probs = np.array([[0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9]])
    assert decide(probs, 0.5).tolist() == [1, 1, 1, 1]
    assert decide(probs, 0.75).tolist() == [0, 0, 1, 1]
    t = best_threshold(probs, [0, 0, 1, 1])
    assert 0.7 < t < 0.8
    assert decide(probs, t).tolist() == [0, 0, 1, 1]


def test_multiclass_uses_argmax():
    probs = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert decide(probs).tolist() == [2, 0]
    m = compute_metrics([2, 0], [2, 0], probs, ["a", "b", "c"])
    assert m["accuracy"] == 1.0 and len(m["confusion_matrix"]) == 3


def test_a_row_without_probabilities_is_undecided_not_class_0():
    probs = np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8]])
    assert decide(probs).tolist() == [0, UNDECIDED, 1]
    three = np.array([[np.nan] * 3, [0.1, 0.2, 0.7]])
    assert decide(three).tolist() == [UNDECIDED, 2]
    m = compute_metrics([0, 0, 1], decide(probs).tolist(), probs, ["Negative", "Positive"])
    assert m["accuracy"] == pytest.approx(2 / 3)  # the undecided row counts as wrong
    assert m["per_class"]["Negative"]["recall"] == pytest.approx(0.5)
    assert m["roc_auc"] is not None and np.isfinite(m["ece"])


def test_k_class_metrics_agree_with_scikit_learn(tmp_path):
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

    from sentiment_lora.decision import decide
    from sentiment_lora.metrics import compute_metrics
    from sentiment_lora.report import plot_confusion_matrix

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    logits = rng.normal(size=(400, 5)) + 2.0 * np.eye(5)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    preds = decide(probs)
    words = ["very negative", "negative", "neutral", "positive", "very positive"]
    m = compute_metrics(list(y), list(preds), probs, words, ordinal=True)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, preds))
    assert m["macro_f1"] == pytest.approx(f1_score(y, preds, average="macro"))
    p, r, f, _ = precision_recall_fscore_support(y, preds, labels=range(5), zero_division=0)
    assert [m["per_class"][w]["recall"] for w in words] == pytest.approx(list(r))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert m["mae_classes"] == pytest.approx(np.abs(y - preds).mean())
    assert np.asarray(m["confusion_matrix"]).shape == (5, 5) and np.asarray(m["confusion_matrix"]).sum() == 400
    # ECE over more than two classes bins the top label's confidence
    top = probs.max(axis=1)
    assert sum(b["n"] for b in m["reliability"]) == 400 and m["reliability"][-1]["n"] == int((top >= 0.9).sum())
    plot_confusion_matrix(m["confusion_matrix"], words, tmp_path / "cm.png", "five classes")
    assert (tmp_path / "cm.png").stat().st_size > 5000


def test_temperature_scaling_lowers_log_loss_of_an_overconfident_model():
    from sentiment_lora.decision import apply_temperature, decide, fit_temperature, log_loss
    from sentiment_lora.metrics import expected_calibration_error

    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 2000)
    true_logits = rng.normal(size=(2000, 5)) + 1.5 * np.eye(5)[y]
    calibrated = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    # The model's labels are drawn from the calibrated probabilities; its reported ones are 3x too sharp.
    y = np.array([rng.choice(5, p=p) for p in calibrated])
    overconfident = apply_temperature(calibrated, 1 / 3)
    t = fit_temperature(overconfident, y)
    fixed = apply_temperature(overconfident, t)
    assert 2.5 < t < 3.5, t
    assert log_loss(fixed, y) < log_loss(overconfident, y) - 0.2
    assert expected_calibration_error(y, fixed) < expected_calibration_error(y, overconfident) / 2
    assert (decide(fixed) == decide(overconfident)).all()  # the ranking, so argmax, is unchanged
    assert fit_temperature(calibrated, y) == pytest.approx(1.0, abs=0.15)


def test_decision_margin_for_two_and_more_classes():
    from sentiment_lora.decision import decision_margin

    assert decision_margin(np.array([[0.3, 0.7], [0.5, 0.5]]), 0.6) == pytest.approx([0.1, 0.1])
    assert decision_margin(np.array([[0.2, 0.41, 0.39], [0.1, 0.1, 0.8]])) == pytest.approx([0.02, 0.7])


def test_bias_calibration_undoes_a_label_preference():
    from sentiment_lora.decision import apply_bias, decide, fit_bias, log_loss

    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 3000)
    logits = rng.normal(size=(3000, 4)) + 1.5 * np.eye(4)[y]
    skewed = logits + np.array([0.0, 2.0, 0.0, -1.0])  # the model prefers label 1, shuns label 3
    probs = np.exp(skewed) / np.exp(skewed).sum(axis=1, keepdims=True)
    b = fit_bias(probs, y)
    assert b[0] == 0 and b[1] < -1.5 and b[3] > 0.5, b
    fixed = apply_bias(probs, b)
    assert log_loss(fixed, y) < log_loss(probs, y)
    assert (decide(fixed) == y).mean() > (decide(probs) == y).mean() + 0.05
