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
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and "report.html" in capsys.readouterr().out
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
