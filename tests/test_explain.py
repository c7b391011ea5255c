"""Word attributions (explain.py) on the tiny trained classifier: completeness, the deletion
check, the unfaithful flag, words merged from tokens, bounded inputs, and the one-line errors."""

from __future__ import annotations

import json
import random
import shutil
import sys

import numpy as np
import pytest

from conftest import load_benchmark, make_review
from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.errors import UserError
from sentiment_lora.explain import baseline_ids, deletion_check, explain, review_tokens

COMPLETENESS_TOL = 0.01
"""|sum of word scores - (f(input) - f(baseline))|, in probability, at 64 steps on the tiny model."""


@pytest.fixture(scope="module")
def clf(tiny_run):
    return SentimentClassifier.load(tiny_run, device="cpu")


def reviews(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [make_review(rng, i % 2, 14) for i in range(n)]


def test_completeness_word_scores_sum_to_the_output_difference(clf):
    """Checked against the classifier's own probabilities of the prompt and of the baseline (the
    scoring path, from token ids), not against the integral's forward pass."""
    for text in reviews(4):
        e = explain(clf, [text], n_steps=64)[0]
        ids = clf.encode([text])[0]
        base = baseline_ids(clf, ids, [i for i, _, _ in review_tokens(clf, ids)[1]])
        f_x, f_b = clf.proba_of_prompts([ids, base])[:, e.label_index]
        assert e.faithful
        assert abs(e.probability - f_x) < 1e-4  # the calibrated probability the classifier gives
        assert abs(sum(w.score for w in e.words) - (f_x - f_b)) < COMPLETENESS_TOL
        assert abs(e.baseline_probability - f_b) < COMPLETENESS_TOL


def test_the_label_explained_is_the_predicted_one_with_calibrated_probability(clf):
    texts = reviews(6, seed=3)
    labels, probs = clf.predict(texts, return_proba=True)
    for e, label, p in zip(explain(clf, texts, n_steps=8), labels, probs):
        assert e.label == label
        assert e.probability == pytest.approx(p[clf.label_words.index(label)], abs=1e-6)


def test_deleting_top_words_moves_the_probability_more_than_random_words(clf):
    """Averaged over many reviews and random draws, so one lucky draw cannot decide it; a ranking
    that ignored the attributions (reversed below) must fail the same comparison."""
    rng = np.random.default_rng(0)
    explained = explain(clf, reviews(16, seed=7), n_steps=16)
    pairs = np.array([p for p in (deletion_check(clf, e, 3, 5, rng) for e in explained) if p is not None])
    assert len(pairs) >= 12
    assert (pairs[:, 0] > pairs[:, 1]).mean() >= 0.75
    assert pairs[:, 0].mean() > 2 * pairs[:, 1].mean()
    flipped = []
    for e in explained:
        for w in e.words:
            w.score = -w.score  # the least supportive words first: deleting them must not win
        flipped.append(deletion_check(clf, e, 3, 5, rng))
    flipped = np.array([p for p in flipped if p is not None])
    assert flipped[:, 0].mean() < flipped[:, 1].mean()


def test_an_unfaithful_explanation_withholds_its_scores(clf):
    e = explain(clf, [reviews(1)[0]], n_steps=2, tolerance=0.0)[0]
    assert not e.faithful and abs(e.delta) > 0
    assert all(w.score is None for w in e.words)
    d = e.to_dict()
    assert d["faithful"] is False and all(w["score"] is None for w in d["words"])
    assert deletion_check(clf, e, 1, 1, np.random.default_rng(0)) is None


def test_words_are_the_reviews_own_merged_from_tokens(clf):
    text = "Brilliant film<br /><br />and a superbly moving cast!"
    e = clf.explain([text], n_steps=4)[0]
    assert e.text == "Brilliant film and a superbly moving cast!"  # cleaned as scoring cleans it
    assert [w.word for w in e.words] == e.text.split()
    assert all(e.text[w.start:w.end] == w.word for w in e.words)
    pieces = "".join(p for w in e.words for p, _ in w.tokens)
    assert "Review" not in pieces and "Sentiment" not in pieces  # the template is not attributed
    assert all(w.score == pytest.approx(sum(s for _, s in w.tokens)) for w in e.words)
    assert any(len(w.tokens) > 1 for w in e.words)  # sub-word tokens were merged


def test_a_huge_review_is_cut_to_the_prompt_budget(clf):
    text = " ".join(reviews(400))
    e = clf.explain([text], n_steps=2)[0]
    assert len(clf.encode([text])[0]) <= clf.prompt.cfg.max_length
    assert len(e.words) < clf.prompt.cfg.max_length and " ... " in e.text


def test_without_captum_the_error_is_one_line(clf, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(UserError, match=r"pip install 'sentiment-lora\[explain\]'"):
        clf.explain(["great film"])


def test_bad_settings_and_the_generate_method_are_refused(clf, monkeypatch):
    with pytest.raises(UserError, match="at least 1"):
        explain(clf, ["great"], n_steps=0)
    monkeypatch.setattr(clf, "method", "generate")
    with pytest.raises(UserError, match="logits method"):
        explain(clf, ["great"])


def test_predict_explain_prints_words_with_scores(tiny_run, capsys):
    from sentiment_lora.cli import main

    assert main(["predict", str(tiny_run), "A brilliant moving film", "dull mess", "--explain", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    for row in rows:
        e = row["explanation"]
        assert e["label"] == row["label"] and e["probability"] == pytest.approx(row["prob"], abs=1e-5)
        assert [w["word"] for w in e["words"]] == row["text"].split()
        assert all(isinstance(w["score"], float) and w["tokens"] for w in e["words"])


@pytest.mark.parametrize("args, fragment", [
    (["--file", "{in}", "--output", "{out}"], "--explain prints to standard output"),
    (["--engine", "ray", "--file", "{in}", "--output", "{out}"], "drop --engine ray"),
])
def test_predict_explain_refuses_what_it_cannot_do(args, fragment, tiny_run, tmp_path, capsys):
    from sentiment_lora.cli import main

    (tmp_path / "in.txt").write_text("a fine film\n")
    subs = {"{in}": str(tmp_path / "in.txt"), "{out}": str(tmp_path / "o.jsonl")}
    assert main(["predict", str(tiny_run), "--explain", *[subs.get(a, a) for a in args]]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_the_server_explains_and_refuses_bad_input(tiny_run, monkeypatch):
    from fastapi.testclient import TestClient

    from sentiment_lora.serve import EXPLAIN_TEXTS, create_app

    with TestClient(create_app(tiny_run, device="cpu")) as client:
        while client.get("/health").status_code != 200:
            pass
        r = client.post("/explain", json={"inputs": "A superb film, loved it"})
        assert r.status_code == 200
        e = r.json()["results"][0]
        label = client.post("/classify", json={"inputs": "A superb film, loved it"}).json()["results"][0]
        assert e["label"] == label["label"] and e["probability"] == pytest.approx(label["probs"][e["label"]],
                                                                                  abs=1e-5)
        assert [w["word"] for w in e["words"]] == ["A", "superb", "film,", "loved", "it"]
        for body, code in (({}, 422), ({"inputs": ""}, 422), ({"inputs": ["x"] * (EXPLAIN_TEXTS + 1)}, 413)):
            r = client.post("/explain", json=body)
            assert r.status_code == code and "error" in r.json()
        monkeypatch.setitem(sys.modules, "captum.attr", None)
        r = client.post("/explain", json={"inputs": "fine"})
        assert r.status_code == 501 and "sentiment-lora[explain]" in r.json()["error"]


def test_shading_colours_each_side_with_a_sign():
    from sentiment_lora.page import shading

    words = [{"word": w, "score": s} for w, s in (("great", 0.30), ("dull", -0.12), ("the", 0.05))]
    e = {"labels": ["Negative", "Positive"], "label": "Negative", "faithful": True, "text": "great dull the",
         "delta": 0.0, "tolerance": 0.05, "words": words}
    got = shading(e)  # scores push toward Negative: blue (+) stands for Positive, so their signs flip
    assert (got["blue"], got["orange"]) == ("Positive", "Negative")
    assert [(w["side"], w["sign"]) for w in got["words"][:2]] == [("o", "−"), ("b", "+")]
    assert got["words"][2]["side"] is None  # under a quarter of the strongest push: left plain
    assert got["words"][0]["alpha"] > got["words"][1]["alpha"]
    withheld = shading({**e, "faithful": False, "delta": 0.2})
    assert "withheld" in withheld["note"]


def test_the_report_shades_the_confident_mistakes(tiny_run, tmp_path, monkeypatch):
    import re as regex

    from sentiment_lora.cli import main
    from sentiment_lora.page import confident_mistakes, explained_mistakes, report_html

    assert "<span class=xtext>" not in (tiny_run / "report.html").read_text(encoding="utf-8")  # training's: plain
    run = shutil.copytree(tiny_run, tmp_path / "run")
    assert main(["report", str(run), "--explain"]) == 0
    html = (run / "report.html").read_text(encoding="utf-8")
    rows = [json.loads(x) for x in (tiny_run / "predictions.jsonl").read_text().splitlines()]
    worst = confident_mistakes(rows)
    assert worst, "the tiny run made no mistakes to explain"
    assert len(regex.findall(r'<span class=xtext>', html)) == len(worst)
    assert "pushed toward Positive" in html and 'class="xw b"' in html
    assert "<span class=xtext>" not in report_html(tiny_run)  # re-rendered without the classifier: plain text
    clf = SentimentClassifier.load(tiny_run, device="cpu")
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    assert explained_mistakes(clf, worst) == worst  # no captum: the report is written without them


@pytest.mark.skipif(shutil.which("chromedriver") is None or shutil.which("chromium") is None,
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
@pytest.mark.parametrize("width", [390, 1280])
def test_the_page_draws_the_explanation(width, tiny_run, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from test_serve import live

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},1000"):
        options.add_argument(flag)
    with live(tiny_run) as server:
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get(server.url + "/")
            driver.find_element(By.ID, "t").send_keys("A superb and moving film, though the plot was dull")
            driver.find_element(By.ID, "go").click()
            WebDriverWait(driver, 30).until(ec.element_to_be_clickable((By.ID, "why-go"))).click()
            WebDriverWait(driver, 120).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#why .xtext")))
            legend = driver.find_element(By.CSS_SELECTOR, "#why .legend").text
            shaded = driver.find_elements(By.CSS_SELECTOR, "#why .xtext .xw")
            signs = {s.find_element(By.TAG_NAME, "sup").text.strip("\u2060") for s in shaded}
            sides = {s.get_attribute("class") for s in shaded}
            overflow = driver.execute_script("return document.documentElement.scrollWidth > window.innerWidth")
            driver.save_screenshot(str(tmp_path / f"explain-{width}.png"))
        finally:
            driver.quit()
    assert "pushed toward Positive" in legend and "pushed toward Negative" in legend
    assert shaded and signs <= {"+", "−"}
    assert sides <= {"xw b", "xw o"}
    assert not overflow


def test_an_unfaithful_first_try_is_retried_with_more_steps(clf):
    text = reviews(1, seed=5)[0]
    first = explain(clf, [text], n_steps=2, max_steps=2, tolerance=1e-6)[0]
    assert not first.faithful and first.n_steps == 2
    again = explain(clf, [text], n_steps=2, max_steps=64, tolerance=abs(first.delta) / 2)[0]
    assert again.n_steps == 64 and abs(again.delta) < abs(first.delta)
    assert explain(clf, [text], n_steps=64, max_steps=128)[0].n_steps == 64  # faithful at once: no retry


def test_the_path_runs_from_the_baseline_to_the_prompt(clf):
    """benchmarks/bench_explain.py's path on ``path_ends``: its ends are the classifier's own
    probabilities of the baseline and of the prompt, through the scoring path from token ids."""
    bench = load_benchmark("bench_explain")
    text = reviews(1, seed=3)[0]
    ids = clf.encode([text])[0]
    base = baseline_ids(clf, ids, [i for i, _, _ in review_tokens(clf, ids)[1]])
    probs = clf.proba_of_prompts([ids, base])
    target = int(probs[0].argmax())
    got = bench.path(clf, text, points=5)["probabilities"]
    assert len(got) == 5
    assert got[-1] == pytest.approx(probs[0, target], abs=1e-4) and got[0] == pytest.approx(probs[1, target], abs=1e-4)


def test_the_deletion_check_resumes_from_its_rows(clf, tmp_path, monkeypatch):
    """A check stopped after two of four reviews explains only the other two when run again and
    ends where an unbroken one does; a rows file of another check is refused, not mixed in."""
    bench = load_benchmark("bench_explain")
    texts, key, rows = reviews(4, seed=11), {"classifier": "tiny", "steps": [8, 16]}, tmp_path / "rows.jsonl"

    def check(rows_file, key):
        return bench.deletion(clf, texts, 2, 3, (8, 16), tmp_path / "out.json", {}, rows_file=rows_file, key=key)

    unbroken = check(rows, key)
    rows.write_text("".join(rows.read_text().splitlines(keepends=True)[:2]))
    explained, real = [], bench.explain
    monkeypatch.setattr(bench, "explain", lambda clf, texts, **kw: explained.append(texts) or real(clf, texts, **kw))
    assert check(rows, key) == unbroken
    assert explained == [[texts[2]], [texts[3]]] and len(rows.read_text().splitlines()) == 4
    with pytest.raises(SystemExit, match="another check"):
        check(rows, {**key, "steps": [16, 64]})
