"""report.html and the pieces the serving page shares with it."""

from __future__ import annotations

import json
import re
import shutil

from sentiment_lora.cli import main
from sentiment_lora.page import confident_mistakes


def test_every_run_gets_a_self_contained_report(tiny_run):
    html = (tiny_run / "report.html").read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 3
    assert not re.search(r'(src|href)="(?!data:)', html), "the report must not load anything from elsewhere"
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    lo, hi = metrics["accuracy_ci95"]
    assert f"{metrics['accuracy']:.4f}" in html and f"{lo:.3f}–{hi:.3f}" in html
    assert "Resolved config" in html and "lora:" in html and "Training log" in html
    rows = [json.loads(x) for x in (tiny_run / "predictions.jsonl").read_text().splitlines()]
    worst = confident_mistakes(rows)
    assert len(worst) == min(10, sum(r["pred"] != r["gold"] for r in rows))
    assert all(a["prob"] >= b["prob"] for a, b in zip(worst, worst[1:]))
    for r in worst:  # shaded word by word when explained (test_explain.py), else the text whole
        for word in r["text"].split()[:6]:
            assert word.replace("&", "&amp;").replace("<", "&lt;") in html


def test_the_report_verb_rebuilds_it_for_an_older_run(tiny_run, tmp_path, capsys):
    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    (run / "report.html").unlink()
    (run / "training_curves.png").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and "report.html" in capsys.readouterr().out
    assert (run / "training_curves.png").is_file()  # drawn again from the training log, as the code draws it now
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_texts_are_escaped(tiny_run, tmp_path):
    from sentiment_lora.page import report_html

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    row = {"id": "test:1", "text": "<script>alert(1)</script>", "gold": "Negative", "pred": "Positive", "prob": 0.99,
           "probs": [0.01, 0.99]}
    (run / "predictions.jsonl").write_text(json.dumps(row) + "\n")
    html = report_html(run)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


def test_the_report_shows_calibration_cuts_costs_and_folds_the_log(tiny_run):
    html = (tiny_run / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    spec = json.loads((tiny_run / "classifier.json").read_text())
    val = metrics["calibration"]["validation"]
    assert f"temperature scaling, T = {spec['temperature']:.3f}" in html
    assert f"{val['log_loss_before']:.4f} → {val['log_loss_after']:.4f}" in html
    assert f"{val['ece_before']:.4f} → {val['ece_after']:.4f}" in html
    assert html.index("<h3>Calibration</h3>") < html.index('alt="Reliability diagram"')
    d = metrics["data"]
    assert f"<td>test</td><td class=num>{d['truncated_test']}</td><td class=num>{d['test_sample']}</td>" in html
    assert f"{metrics['train']['train_seconds']:.0f} s" in html and "peak memory while training" in html
    assert html.count("<details>") == 2 and html.index("<details>") > html.index("<h2>Training log</h2>")
    assert re.search(r'<link rel=icon href="data:image/svg\+xml,', html)  # no request for /favicon.ico


def test_an_older_run_renders_what_it_has(tiny_run, tmp_path):
    from sentiment_lora.page import report_html

    run = shutil.copytree(tiny_run, tmp_path / "old")
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("calibration", "train", "data", "eval_reviews_per_s", "wall_seconds"):
        metrics.pop(key, None)
    (run / "metrics.json").write_text(json.dumps(metrics))
    spec = json.loads((run / "classifier.json").read_text())
    html = report_html(run)
    assert f"temperature scaling, T = {spec['temperature']:.3f}" in html  # the spec still says how
    assert "Log-loss and ECE before and after calibration: not recorded by this run." in html
    assert html.count("not recorded by this run") == 3  # and neither the cut texts nor the costs


def test_the_log_is_rounded_and_baselines_beside_the_run_are_shown(tiny_run, tmp_path):
    from sentiment_lora.page import report_html

    run = shutil.copytree(tiny_run, tmp_path / "runs" / "mine")
    row = {"step": 28, "epoch": 0.875, "loss": 0.2522999, "lr": 4.621229016452155e-05, "skipped_steps": 0}
    (run / "train_log.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "runs" / "tfidf").mkdir()
    (tmp_path / "runs" / "tfidf" / "metrics.json").write_text(json.dumps(
        {"method": "tfidf-logreg", "n": 24877, "accuracy": 0.8871, "accuracy_ci95": [0.883, 0.891], "macro_f1": 0.887,
         "dataset": "stanfordnlp/imdb"}))
    (tmp_path / "runs" / "other").mkdir()
    (tmp_path / "runs" / "other" / "metrics.json").write_text(json.dumps({"method": "logits", "accuracy": 0.5}))
    html = report_html(run)
    assert "4.621e-05" in html and "4.621229016452155e-05" not in html and "0.2523" in html
    assert "<h2>Baselines beside this run</h2>" in html
    assert "<td>tfidf<br><span class=muted>tfidf-logreg, stanfordnlp/imdb</span></td>" in html
    assert "0.8871 (0.883–0.891)" in html and "<td>other<br>" not in html
    html = report_html(tiny_run)
    assert "Baselines beside this run" not in html


def test_the_validation_curve_is_scaled_to_its_points():
    import matplotlib.pyplot as plt

    from sentiment_lora.report import plot_validation

    fig, ax = plt.subplots()
    plot_validation(ax, [{"step": 16, "val_accuracy": 0.875}, {"step": 32, "val_accuracy": 0.859375}])
    low, high = ax.get_ylim()
    assert 0.8 < low < 0.859375 and 0.875 < high < 0.95
    assert [t.get_text() for t in ax.texts] == ["0.875", "0.859"]
    plt.close(fig)
