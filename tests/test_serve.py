"""The HTTP server on the tiny model: contract, batching, limits, shutdown, auth, the real
huggingface_hub client, and the page in a real (headless) Chromium. Loopback only."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from sentiment_lora.serve import ServeConfig, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    """A uvicorn server in a thread, on loopback."""

    def __init__(self, app, port: int):
        import uvicorn

        self.app, self.url = app, f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not come up")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def state(self):
        return self.app.state.serve


def live(tiny_run, **kwargs) -> Live:
    port = free_port()
    cfg = ServeConfig(port=port, **kwargs)
    return Live(create_app(tiny_run, cfg, device="cpu"), port)


def post(url: str, body, **kwargs) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url, content=data, headers={"Content-Type": "application/json", **kwargs.pop("headers", {})},
                      timeout=30, **kwargs)


TEXTS = ["a great and moving film", "boring awful mess, a waste", "the plot was superb and the cast brilliant"]


@pytest.fixture(scope="module")
def server(tiny_run):
    with live(tiny_run, max_wait_ms=20) as s:
        yield s


@pytest.fixture(scope="module")
def reference(tiny_run):
    from sentiment_lora.classifier import SentimentClassifier

    clf = SentimentClassifier.load(tiny_run, device="cpu")
    return clf.label_words, clf.predict_proba(TEXTS)


def test_the_contract_both_shapes_equal_predict_proba(server, reference):
    words, probs = reference
    one = post(server.url + "/predict", {"inputs": TEXTS[0]})
    assert one.status_code == 200
    rows = one.json()  # one string in: one flat list, as TEI answers
    assert [r["label"] for r in rows] == sorted(words, key=lambda w: -probs[0][words.index(w)])
    assert sum(r["score"] for r in rows) == pytest.approx(1, abs=1e-6)
    many = post(server.url + "/predict", {"inputs": TEXTS}).json()
    assert len(many) == len(TEXTS)
    for row, want in zip(many, probs):
        scores = [r["score"] for r in row]
        assert scores == sorted(scores, reverse=True)
        got = np.array([next(r["score"] for r in row if r["label"] == w) for w in words])
        np.testing.assert_allclose(got, want, atol=1e-5)
    api = post(server.url + "/", {"inputs": TEXTS[0], "parameters": {"top_k": 1}}).json()
    assert len(api) == 1 and len(api[0]) == 1 and api[0][0]["label"] == rows[0]["label"]


def test_classify_uses_the_classifiers_decision(server, reference, tiny_run):
    from sentiment_lora.classifier import SentimentClassifier

    out = post(server.url + "/classify", {"inputs": TEXTS}).json()
    clf = SentimentClassifier.load(tiny_run, device="cpu")
    assert [r["label"] for r in out["results"]] == clf.predict(TEXTS)
    assert out["ms"] > 0


def test_the_huggingface_hub_client_unchanged(server):
    from huggingface_hub import InferenceClient

    result = InferenceClient(server.url).text_classification(TEXTS[1])
    direct = post(server.url + "/predict", {"inputs": TEXTS[1]}).json()
    assert [(r.label, round(r.score, 6)) for r in result] == [(r["label"], round(r["score"], 6)) for r in direct]


def test_concurrent_requests_share_model_calls(server):
    before = server.state.batcher.calls

    async def burst():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*[client.post(server.url + "/predict", json={"inputs": f"{t} {i}"})
                                          for i, t in enumerate(TEXTS * 6)][:16])

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    calls = server.state.batcher.calls - before
    assert 1 <= calls < 16, calls


def test_health_info_metrics_and_page(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    info = httpx.get(server.url + "/info").json()
    assert info["labels"] == ["Negative", "Positive"] and "{text}" in info["template"]
    assert info["test_metrics"]["n"] and len(info["test_metrics"]["accuracy_ci95"]) == 2
    assert info["precision"] == "fp32"  # the suite's simulated processor has no bf16 or int8 units
    cal = info["calibration"]
    assert cal["kind"] == "temperature" and cal["temperature"] == server.state.spec.temperature
    assert set(cal["validation"]) >= {"n", "log_loss_before", "log_loss_after", "ece_before", "ece_after"}
    text = httpx.get(server.url + "/metrics").text
    for series in ("sentiment_lora_requests_total", "sentiment_lora_errors_total", "sentiment_lora_request_seconds",
                   "sentiment_lora_batch_size", "sentiment_lora_queue_depth"):
        assert series in text
    page = httpx.get(server.url + "/").text
    assert "<textarea" in page and "data:image/png;base64," in page and "http" not in page.split("<style>")[1][:20]
    assert '<link rel=icon href="data:' in page  # the browser asks for no /favicon.ico


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 422, "not valid JSON"),
    ({"text": "x"}, 422, '"inputs"'),
    ({"inputs": 5}, 422, "a text or a list of texts"),
    ({"inputs": [1, 2]}, 422, "input 0 is int"),
    ({"inputs": []}, 422, "empty list"),
    ({"inputs": ""}, 422, "input 0 is empty"),
    ({"inputs": ["ok", "   "]}, 422, "input 1 is empty"),
    ({"inputs": "x", "parameters": {"top_k": 0}}, 422, "top_k"),
    ({"inputs": "x", "parameters": {"function_to_apply": "sigmoid"}}, 422, "softmax"),
    ({"inputs": ["x"] * 9}, 413, "more than the 8 allowed"),
    ({"inputs": "x" * 5000}, 413, "more than the 4000 allowed"),
])
def test_bad_requests_get_one_line_json_errors(tiny_run, body, status, fragment):
    with live(tiny_run, max_texts_per_request=8, max_body_bytes=4000) as s:
        for route in ("/predict", "/", "/classify"):
            r = post(s.url + route, body)
            assert r.status_code == status, (route, r.text)
            err = r.json()["error"]
            assert fragment in err and "\n" not in err, err
        assert post(s.url + "/predict", {"inputs": "still serving"}).status_code == 200


def test_a_long_text_is_truncated_not_refused(server):
    r = post(server.url + "/predict", {"inputs": "great film " * 2000})
    assert r.status_code == 200 and len(r.json()) == 2


def test_a_full_queue_is_503_and_a_slow_request_504(tiny_run):
    with live(tiny_run, max_queue=2, request_timeout_s=0.3) as s:
        clf = s.state.clf
        real = clf.proba_of_prompts
        clf.proba_of_prompts = lambda ids, batch_size=None: (time.sleep(1.0), real(ids, batch_size))[1]
        r = post(s.url + "/predict", {"inputs": TEXTS})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "busy" in r.json()["error"]
        r = post(s.url + "/predict", {"inputs": TEXTS[0]})
        assert r.status_code == 504 and "waited more than 0.3 s" in r.json()["error"]
        clf.proba_of_prompts = real
        time.sleep(1.2)
        assert post(s.url + "/predict", {"inputs": TEXTS[0]}).status_code == 200


def test_a_failing_model_call_fails_its_request_only(tiny_run):
    with live(tiny_run) as s:
        clf = s.state.clf
        real = clf.proba_of_prompts

        def once(ids, batch_size=None):
            clf.proba_of_prompts = real
            raise RuntimeError("boom")

        clf.proba_of_prompts = once
        r = post(s.url + "/predict", {"inputs": TEXTS[0]})
        assert r.status_code == 500 and r.json()["error_type"] == "internal"
        assert post(s.url + "/predict", {"inputs": TEXTS[0]}).status_code == 200


def test_health_is_503_until_the_model_is_loaded(tiny_run):
    from sentiment_lora.classifier import SentimentClassifier

    gate = threading.Event()

    def slow_load():
        gate.wait(30)
        return SentimentClassifier.load(tiny_run, device="cpu")

    port = free_port()
    app = create_app(tiny_run, ServeConfig(port=port), load=slow_load)
    s = Live(app, port)
    s.thread.start()
    try:
        for _ in range(200):
            try:
                r = httpx.get(s.url + "/health")
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert r.status_code == 503 and "loading" in r.json()["error"]
        assert post(s.url + "/predict", {"inputs": "x"}).status_code == 503
        gate.set()
        for _ in range(200):
            if httpx.get(s.url + "/health").status_code == 200:
                break
            time.sleep(0.05)
        assert post(s.url + "/predict", {"inputs": "x"}).status_code == 200
    finally:
        gate.set()
        s.__exit__()


def test_api_key(tiny_run):
    with live(tiny_run, api_key="s3cret") as s:
        assert httpx.get(s.url + "/health").status_code == 200
        for method, route in (("get", "/"), ("get", "/info"), ("get", "/metrics"), ("post", "/predict")):
            r = getattr(httpx, method)(s.url + route, **({"json": {"inputs": "x"}} if method == "post" else {}))
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", route
        wrong = post(s.url + "/predict", {"inputs": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = post(s.url + "/predict", {"inputs": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        from huggingface_hub import InferenceClient

        assert InferenceClient(s.url, api_key="s3cret").text_classification("x")


def test_shutdown_finishes_the_request_in_flight(tiny_run):
    with live(tiny_run) as s:
        clf = s.state.clf
        real = clf.proba_of_prompts
        clf.proba_of_prompts = lambda ids, batch_size=None: (time.sleep(1.5), real(ids, batch_size))[1]
        result = {}
        t = threading.Thread(target=lambda: result.update(r=post(s.url + "/predict", {"inputs": TEXTS[0]})))
        t.start()
        time.sleep(0.5)
        s.server.should_exit = True  # what uvicorn's SIGINT / SIGTERM handler does
        t.join(30)
        s.thread.join(30)
        assert result["r"].status_code == 200 and len(result["r"].json()) == 2
        assert not s.thread.is_alive()


def test_serve_cli_exits_0_on_sigterm(tiny_run):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sentiment_lora.cli", "serve", str(tiny_run), "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert post(f"http://127.0.0.1:{port}/predict", {"inputs": "fine"}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err


def test_serve_cli_bad_options_are_one_line(tiny_run, tmp_path):
    for args, fragment in ((["--port", "70000"], "--port 70000"), (["--max-wait-ms", "nan"], "--max-wait-ms"),
                           (["--max-batch-texts", "0"], "must be 1 or more")):
        r = subprocess.run([sys.executable, "-m", "sentiment_lora.cli", "serve", str(tiny_run), *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "sentiment_lora.cli", "serve", str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "not a classifier run folder" in r.stderr


@pytest.mark.skipif(shutil.which("chromedriver") is None or shutil.which("chromium") is None,
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_the_page_in_a_real_browser(server, tmp_path, reference):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": 390, "height": 844,
                                                                          "pixelRatio": 2}})  # a phone
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(server.url + "/")
        driver.find_element(By.ID, "t").send_keys(TEXTS[0])
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#label b")))
        label = driver.find_element(By.CSS_SELECTOR, "#label b").text
        bars = {b.get_attribute("data-label"): float(b.get_attribute("data-prob"))
                for b in driver.find_elements(By.CSS_SELECTOR, ".bar")}
        width = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[1] == 390 and width[0] <= width[1], width  # no sideways scrolling at phone width
        driver.save_screenshot(str(tmp_path / "page.png"))
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # e.g. no 404 for /favicon.ico: the page brings its own icon
    finally:
        driver.quit()
    words, probs = reference
    assert set(bars) == set(words) and sum(bars.values()) == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose([bars[w] for w in words], probs[0], atol=1e-5)
    assert label in words and (tmp_path / "page.png").stat().st_size > 1000


def test_the_batcher_keeps_its_limits_and_groups_similar_lengths():
    from sentiment_lora.serve import Batcher

    seen = []

    def score(prompts):
        seen.append([len(p) for p in prompts])
        return np.full((len(prompts), 2), 0.5)

    lengths = [10, 60, 12, 50, 11, 9, 30, 70, 8, 13]

    async def go():
        batcher = Batcher(score, ServeConfig(max_batch_texts=4, max_batch_tokens=100, max_wait_ms=20))
        worker = asyncio.create_task(batcher.run())
        out = await asyncio.gather(*[batcher.submit([[1] * n]) for n in lengths])
        worker.cancel()
        return out, batcher.waiting

    out, waiting = asyncio.run(go())
    assert len(out) == len(lengths) and waiting == 0
    assert sorted(x for batch in seen for x in batch) == sorted(lengths)
    assert all(len(batch) <= 4 and max(batch) * len(batch) <= 100 for batch in seen), seen
    assert seen[0][0] <= 13 and len(seen) < len(lengths), seen  # the short ones went together, first


def test_the_server_takes_the_token_budget_of_the_classifier_as_loaded(tiny_run):
    """The budget depends on the precision the classifier loads in (precision.scoring_budget), so
    a server not told one takes it from the loaded classifier; one told keeps its own."""
    from types import SimpleNamespace

    from sentiment_lora.serve import Batcher, Service
    from sentiment_lora.spec import ClassifierSpec

    spec, clf = ClassifierSpec.load(tiny_run), SimpleNamespace(max_batch_tokens=2048)
    untold = Service(tiny_run, ServeConfig(), spec, lambda: clf)
    untold.batcher = Batcher(None, untold.cfg)
    untold.load_model()
    assert untold.clf is clf and untold.cfg.max_batch_tokens == untold.batcher.cfg.max_batch_tokens == 2048
    told = Service(tiny_run, ServeConfig(max_batch_tokens=300), spec, lambda: clf)
    told.load_model()
    assert told.cfg.max_batch_tokens == 300
