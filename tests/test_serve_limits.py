"""The server against careless or hostile clients and a broken classifier, on loopback with the
tiny model: a chunked body past --max-body-bytes is refused as it arrives, a client that hangs
up leaves no traceback and no scored texts, a classifier that cannot load stops ``serve`` with
one line, and an API key must be one that HTTP clients can send."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from sentiment_lora.errors import UserError
from sentiment_lora.serve import ServeConfig
from test_serve import free_port, live, post


@contextlib.contextmanager
def served(run: Path, log: Path, *args: str):
    """``sentiment-lora serve run`` in a subprocess, its stderr in ``log``; yields (process, port)
    once /health says ok, and kills the process on the way out."""
    port = free_port()
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sentiment_lora.cli", "serve", str(run), "--port", str(port),
                                 "--device", "cpu", *args], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield proc, port
    finally:
        proc.kill()
        proc.wait(30)


def status_kb(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def peak_growth_kb(pid: int, action) -> int:
    """How far the resident memory of ``pid`` rose above its level before ``action()``, at its peak."""
    before = status_kb(pid, "VmRSS")
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
    except OSError:
        return sampled_peak_kb(pid, action) - before
    action()
    return status_kb(pid, "VmHWM") - before


def sampled_peak_kb(pid: int, action) -> int:
    """The highest VmRSS seen every 5 ms during ``action()``, where the kernel's peak cannot be reset."""
    peak, done = [status_kb(pid, "VmRSS")], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], status_kb(pid, "VmRSS"))
            time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    try:
        action()
    finally:
        done.set()
        t.join(10)
    return peak[0]


def post_chunked(port: int, size: int, chunk: int = 64 * 1024) -> tuple[int, dict]:
    """POST a JSON body of about ``size`` bytes with Transfer-Encoding: chunked (no Content-Length)."""
    def body():
        yield b'{"inputs": "'
        for _ in range(size // chunk):
            yield b"a" * chunk
        yield b'"}'

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/predict", body=body(), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads memory from /proc (Linux)")
def test_a_chunked_body_past_the_limit_is_refused_as_it_arrives(tiny_run, tmp_path):
    limit = 1_000_000
    with served(tiny_run, tmp_path / "serve.log", "--max-body-bytes", str(limit)) as (proc, port):
        url = f"http://127.0.0.1:{port}"
        assert post(url + "/predict", {"inputs": "a fine film"}).status_code == 200
        # Once before measuring: the first refusal grows the heap and buffers that later ones reuse,
        # which says nothing about what a request can make the server hold.
        assert post_chunked(port, 2 * limit)[0] == 413
        result = {}
        grew = peak_growth_kb(proc.pid, lambda: result.update(r=post_chunked(port, 10 * limit)))
        status, error = result["r"]
        assert status == 413 and error["error_type"] == "payload_too_large", error
        assert str(limit) in error["error"] and "\n" not in error["error"]
        assert grew * 1024 < 2 * limit, f"the server grew by {grew} kB"
        assert post(url + "/predict", {"inputs": "still serving"}).status_code == 200


def test_a_chunked_body_within_the_limit_is_served(tiny_run):
    with live(tiny_run, max_body_bytes=300_000) as s:
        status, rows = post_chunked(int(s.url.rsplit(":", 1)[1]), 200_000)
        assert status == 200 and len(rows) == 2


def hang_up_mid_body(port: int) -> None:
    """Headers promising 100000 bytes, a part of them, then the connection closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b'{"inputs": "' + b"a" * 5000)
        time.sleep(0.05)  # the server is reading the body by now


def batches_scored(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return float(next(x for x in text.splitlines() if x.startswith("sentiment_lora_batch_size_count")).split()[1])


def test_a_client_hanging_up_mid_body_is_no_traceback(tiny_run, tmp_path):
    log = tmp_path / "serve.log"
    with served(tiny_run, log) as (proc, port):
        url = f"http://127.0.0.1:{port}"
        assert post(url + "/predict", {"inputs": "a fine film"}).status_code == 200
        before = batches_scored(url)
        for _ in range(8):
            hang_up_mid_body(port)
        assert batches_scored(url) == before
        assert post(url + "/predict", {"inputs": "still serving"}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    err = log.read_text()
    assert "Traceback" not in err and "Exception in ASGI application" not in err, err
    assert len(err.splitlines()) <= 8, err  # at most one line a disconnect


def test_a_client_gone_while_queued_has_its_texts_dropped(tiny_run):
    with live(tiny_run, max_wait_ms=1) as s:
        clf, batcher = s.state.clf, s.state.batcher
        real, scoring, release, scored = clf.proba_of_prompts, threading.Event(), threading.Event(), []

        def held(ids, batch_size=None):  # the first batch holds the worker until released
            scored.append(len(ids))
            scoring.set()
            release.wait(10)
            return real(ids, batch_size)

        clf.proba_of_prompts = held
        first = threading.Thread(target=post, args=(s.url + "/predict", {"inputs": "the first text"}))
        first.start()
        try:
            assert scoring.wait(10)
            body = json.dumps({"inputs": ["gone one", "gone two", "gone three"]}).encode()
            with socket.create_connection(("127.0.0.1", int(s.url.rsplit(":", 1)[1])), timeout=10) as sock:
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                deadline = time.monotonic() + 10
                while batcher.waiting < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert batcher.waiting == 3  # queued behind the first text
            time.sleep(0.3)  # the server sees the connection closed
        finally:
            release.set()
            first.join(30)
        assert post(s.url + "/predict", {"inputs": ["after one", "after two"]}).status_code == 200
        assert scored == [1, 2] and batcher.waiting == 0, scored


def damaged_behind_its_hashes(run: Path, tmp_path: Path) -> Path:
    """A copy of ``run`` whose adapter weights have their header overwritten (the size kept) and
    whose classifier.json records the damaged file's hashes: the folder checks out, the weights
    do not load."""
    from sentiment_lora.spec import ClassifierSpec

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = copy / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:24] = b"#" * 16  # the start of the JSON header, after its 8-byte length
    weights.write_bytes(bytes(data))
    ClassifierSpec.load(copy, verify=False).save(copy)
    return copy


def test_serve_with_a_classifier_that_cannot_load_is_one_error_line(tiny_run, tmp_path):
    from sentiment_lora.spec import ClassifierSpec

    copy = damaged_behind_its_hashes(tiny_run, tmp_path)
    ClassifierSpec.load(copy)  # the folder reads as a classifier; only loading its weights fails
    r = subprocess.run([sys.executable, "-m", "sentiment_lora.cli", "serve", str(copy), "--port", str(free_port()),
                        "--device", "cpu"], capture_output=True, text=True, timeout=60)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    assert str(copy) in lines[0] and "on http://" not in r.stdout, (lines, r.stdout)


@pytest.fixture
def no_uvicorn(monkeypatch):
    """``uvicorn.Server.run`` replaced by a stub that returns at once, recording that it was called:
    an in-process ``serve`` that got as far as serving returns instead of blocking."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: calls.append(self))
    return calls


def test_any_load_failure_stops_serve_with_one_error_line(tiny_run, monkeypatch, capsys, no_uvicorn):
    from sentiment_lora.classifier import SentimentClassifier
    from sentiment_lora.cli import main

    def fail(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nwith a second line")

    monkeypatch.setattr(SentimentClassifier, "load", fail)
    code = main(["serve", str(tiny_run), "--port", str(free_port()), "--device", "cpu"])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "RuntimeError: CUDA out of memory" in lines[0] and "on http://" not in out and not no_uvicorn


@pytest.mark.parametrize("key", ["clé", "鍵", "two words", "tab\there"])
def test_an_api_key_clients_cannot_send_is_refused_at_startup(key, tiny_run, capsys, no_uvicorn):
    from sentiment_lora.cli import main

    with pytest.raises(UserError, match="--api-key"):
        ServeConfig(api_key=key)
    code = main(["serve", str(tiny_run), "--port", str(free_port()), "--api-key", key])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --api-key"), lines
    assert not no_uvicorn


def test_the_api_key_is_compared_on_the_bytes_sent(tiny_run):
    with live(tiny_run, api_key="s3cret") as s:
        for sent in (b"Bearer s3cr\xc3\xa9t", b"Bearer s3cret\xc3\xa9", b"Bearer s3cr\xe9t"):
            r = httpx.get(s.url + "/info", headers={"Authorization": sent}, timeout=10)
            assert r.status_code == 401 and r.json()["error_type"] == "unauthorized", sent
        assert httpx.get(s.url + "/info", headers={"Authorization": b"Bearer s3cret"}, timeout=10).status_code == 200
