import json

import numpy as np
import pytest

from sentiment_lora.baseline import C_GRID, NBScaler, run_tfidf, run_zero_shot
from sentiment_lora.cli import main
from sentiment_lora.errors import UserError
from sentiment_lora.metrics import expected_calibration_error, reliability, wilson_interval


def test_nb_scaler_weights_words_by_class():
    from scipy import sparse

    X = sparse.csr_matrix(np.array([[1, 0, 1], [1, 0, 1], [0, 1, 1], [0, 1, 1]], dtype=float))
    r = NBScaler().fit(X, [1, 1, 0, 0]).ratio_
    assert r[0] > 0 > r[1] and r[2] == pytest.approx(0.0)
    with pytest.raises(UserError, match="two classes"):
        NBScaler().fit(X, [0, 1, 2, 0])


@pytest.mark.parametrize("nb", [False, True])
def test_tfidf_baseline_learns_the_tiny_data(tiny_data_dir, tmp_path, nb):
    m = run_tfidf(str(tiny_data_dir), tmp_path / "out", nb=nb)
    # The tiny reviews are made of clearly positive or negative words: a bag of words must
    # get nearly all of them, far above chance.
    # One tiny test review also occurs in train: scored by no method, so dropped here too.
    assert m["accuracy"] >= 0.9 and m["n"] + m["test_rows_in_train_dropped"] == 60
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["accuracy"] == m["accuracy"] and saved["C"] in C_GRID
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == m["n"]
    with pytest.raises(UserError, match="not empty"):
        run_tfidf(str(tiny_data_dir), tmp_path / "out", nb=nb)


def test_the_stacks_character_model_scores_alone_from_the_command_line(tiny_data_dir, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default folder is named as the stack names the model
    args = ["baseline", "tfidf", "--dataset", str(tiny_data_dir), "--nb"]
    assert main([*args, "--output-dir", str(tmp_path / "words")]) == 0
    assert main([*args, "--chars"]) == 0
    folders = ("words", "runs/baseline-tfidf-nb-chars")
    words, chars = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in folders)
    assert (words["method"], chars["method"]) == ("tfidf-nb-logreg", "tfidf-nb-chars-logreg")
    assert chars["features"] > words["features"] and chars["accuracy"] >= 0.9
    assert "tfidf-nb-chars-logreg: accuracy" in capsys.readouterr().out
    assert main(["baseline", "zero-shot", "--chars"]) == 2
    assert "--chars applies to baseline tfidf only" in capsys.readouterr().err


def test_zero_shot_baseline_writes_metrics(tiny_config, tmp_path):
    m = run_zero_shot(tiny_config(), tmp_path / "zs")
    assert m["n"] == 24 and 0 < m["threshold"] < 1
    # The uncalibrated accuracy is the 0.5 rule on the saved (raw) probabilities, recomputed here.
    rows = [json.loads(r) for r in (tmp_path / "zs" / "predictions.jsonl").read_text().splitlines()]
    at_half = np.mean([(r["probs"][1] >= 0.5) == (r["gold"] == "Positive") for r in rows])
    assert m["accuracy_uncalibrated"] == pytest.approx(at_half)
    assert (tmp_path / "zs" / "metrics.json").is_file()
    with pytest.raises(UserError, match="val_size"):
        run_zero_shot(tiny_config("data.val_size=0"), tmp_path / "zs2")


def test_cli_baseline_errors_are_one_line(tmp_path, capsys):
    assert main(["baseline", "tfidf", "--dataset", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_wilson_interval_known_case():
    # 81 of 100, worked by hand from the formula: centre 0.7985, half-width 0.0763
    low, high = wilson_interval(81, 100)
    assert low == pytest.approx(0.7222, abs=1e-4) and high == pytest.approx(0.8749, abs=1e-4)


def test_ece_is_zero_when_calibrated_and_large_when_not():
    labels = [1] * 7 + [0] * 3
    probs = np.array([[0.3, 0.7]] * 10)
    assert expected_calibration_error(labels, probs) == pytest.approx(0.0)
    overconfident = np.array([[0.01, 0.99]] * 10)
    assert expected_calibration_error(labels, overconfident) == pytest.approx(0.29)
    table = reliability(labels, probs)
    assert sum(b["n"] for b in table) == 10 and table[7]["frequency"] == pytest.approx(0.7)


def test_tfidf_for_three_unbalanced_classes(tmp_path):
    import random

    import pandas as pd

    from sentiment_lora.baseline import run_tfidf
    from sentiment_lora.config import DataConfig
    from sentiment_lora.errors import UserError

    rng = random.Random(0)
    vocab = {0: ["awful", "dull", "mess"], 1: ["fine", "okay", "average"], 2: ["great", "superb", "moving"]}
    folder = tmp_path / "d"
    folder.mkdir()
    for split, n in (("train", 300), ("validation", 60), ("test", 120)):
        labels = [0] * (n // 2) + [1] * (n // 3) + [2] * (n - n // 2 - n // 3)
        rows = [(" ".join(rng.choice(vocab[y] + ["the", "film", "was"]) for _ in range(8)), y) for y in labels]
        if split == "train":
            train_rows = rows
        else:  # two rows also in train: scored by no method, so dropped here as in every run
            rows[:2] = train_rows[:2]
        pd.DataFrame(rows, columns=["text", "label"]).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    cfg = DataConfig(dataset=str(folder), val_split="validation")
    m = run_tfidf(cfg, tmp_path / "out", label_words=["bad", "meh", "good"])
    assert m["n"] == 118 and m["test_rows_in_train_dropped"] == 2
    assert len(m["confusion_matrix"]) == 3 and m["val_size"] == 58
    assert m["accuracy"] > 0.6 and m["roc_auc"] is not None
    assert main(["baseline", "tfidf", "--dataset", str(folder), "--set", "prompt.label_words=[bad, meh, good]",
                 "--nb", "--output-dir", str(tmp_path / "nb")]) == 2
    with pytest.raises(UserError, match="two classes only"):
        run_tfidf(cfg, tmp_path / "nb2", nb=True, label_words=["bad", "meh", "good"])


def test_pick_c_prefers_the_best_score_then_the_c_nearest_one():
    from sentiment_lora.baseline import pick_c

    assert pick_c({0.01: 0.7, 1.0: 0.8, 100.0: 0.9}) == 100.0
    assert pick_c({0.01: 0.9, 0.5: 0.9, 4.0: 0.9, 64.0: 0.8}) == 0.5
    assert pick_c({0.25: 0.9, 4.0: 0.9}) in (0.25, 4.0)  # |log| equal: either is fine
