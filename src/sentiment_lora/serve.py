"""``sentiment-lora serve``: one long-lived process, the classifier loaded once, over HTTP.

FastAPI + uvicorn with a small asyncio batcher, rather than LitServe: our batching rule (close
a batch on a text count, a padded-token budget or a few milliseconds' wait; sort by length) is
short over an asyncio queue, and the HTTP contract (Text Embeddings Inference's ``/predict``,
the Inference API's ``POST /``) wants full control of request parsing and error shapes.

- ``POST /predict``: ``{"inputs": "text" | ["a", "b"]}`` -> for each input, every label
  with its score, highest first (a flat list for one string input, as TEI answers).
- ``POST /``: the same, always one list per input, which is what
  ``huggingface_hub.InferenceClient(url).text_classification`` posts and reads.
- ``POST /classify``: the decided label (``decision.decide``) and probabilities; the page uses it.
- ``POST /explain``: the same inputs (at most ``EXPLAIN_TEXTS``) -> each text's words and their
  push toward its label (explain.py), for the page's "why this label"; needs captum.
- ``GET /`` the page, ``/health`` (503 until the model is loaded), ``/info``, ``/metrics``.

The model runs in one worker thread, one call at a time; the event loop only queues. An
explanation holds the same model lock as scoring: captum hooks the embedding layer while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import Request  # at module level: FastAPI reads the handlers' annotations from here


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to bind; 127.0.0.1 serves this machine only."""
    port: int = 8000
    max_batch_texts: int | None = None
    """Most texts scored in one model call (None: the classifier's batch_size)."""
    max_batch_tokens: int | None = None
    """Most padded tokens (texts x longest prompt) in one model call (None: the classifier's, else 8192)."""
    max_wait_ms: float = 5.0
    """How long the worker waits for more texts before scoring a batch that is not full."""
    max_queue: int = 1024
    """Texts waiting at most; beyond it requests get 503 with Retry-After."""
    request_timeout_s: float = 60.0
    """A request still waiting after this gets 504."""
    max_texts_per_request: int = 64
    """More inputs in one request get 413."""
    max_body_bytes: int = 1_000_000
    """A larger request body gets 413."""
    api_key: str | None = None
    """When set, every route but /health needs ``Authorization: Bearer <key>``. ASCII letters, digits and
    punctuation only: clients send other characters in a header differently (UTF-8, Latin-1, an error), if at
    all, and strip blanks at its ends."""

    def __post_init__(self):
        from .errors import UserError

        for key in ("max_batch_texts", "max_batch_tokens", "max_queue", "max_texts_per_request", "max_body_bytes"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise UserError(f"--{key.replace('_', '-')} must be 1 or more")
        if not (np.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise UserError(f"--max-wait-ms is {self.max_wait_ms}; use a finite number of 0 or more")
        if not (np.isfinite(self.request_timeout_s) and self.request_timeout_s > 0):
            raise UserError(f"--request-timeout is {self.request_timeout_s}; use a finite number above 0")
        if not 0 < self.port < 65536:
            raise UserError(f"--port {self.port} must be from 1 to 65535")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api-key must not be empty")
        if self.api_key is not None and not all("!" <= c <= "~" for c in self.api_key):
            raise UserError("--api-key may hold only ASCII letters, digits and punctuation, no spaces: HTTP clients "
                            "cannot reliably send other characters in a header")


class Rejected(Exception):
    """A request the API refuses, with its status and one-line message."""

    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


class Batcher:
    """Texts from concurrent requests, scored together: ``submit`` queues a request's prompts and
    waits for their probabilities; one worker task batches what is queued (``_pick``, waiting at
    most ``max_wait_ms`` for more), sorts the batch by length and scores it in a thread."""

    def __init__(self, score, cfg: ServeConfig, metrics: Metrics | None = None):
        self.score = score  # list of prompt ids -> probabilities (n, labels)
        self.cfg = cfg
        self.metrics = metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.waiting = 0
        self.calls = 0
        self.pending: list = []  # taken from the queue, not yet scored; oldest first

    async def submit(self, prompts: list[list[int]]) -> np.ndarray:
        if self.waiting + len(prompts) > self.cfg.max_queue:
            raise Rejected(503, f"the server is busy ({self.waiting} texts waiting); retry shortly", "overloaded",
                           {"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in prompts]
        for ids, fut in zip(prompts, futures):
            self.queue.put_nowait((ids, fut))
        self._waiting(len(prompts))
        # asyncio.wait, not wait_for(gather(...)): cancelling a gather logs "exception was never
        # retrieved", and a caller that gives up (a client gone) cancels this wait.
        try:
            done, pending = await asyncio.wait(futures, timeout=self.cfg.request_timeout_s,
                                               return_when=asyncio.FIRST_EXCEPTION)
        finally:
            _drop(futures)
        failed = [fut.exception() for fut in done if fut.exception() is not None]
        if failed:
            raise failed[0]
        if pending:
            raise Rejected(504, f"the request waited more than {self.cfg.request_timeout_s:g} s; retry, or send "
                                f"fewer texts at once", "timeout")
        return np.stack([fut.result() for fut in futures])

    def _waiting(self, delta: int) -> None:
        self.waiting += delta
        if self.metrics:
            self.metrics.queue.set(self.waiting)

    def _pick(self) -> tuple[list, bool]:
        """The next batch from the waiting texts: the oldest one, plus those nearest to it in length
        (little padding), within the text and token limits. Also whether it is as full as it can get."""
        anchor, rest = self.pending[0], self.pending[1:]
        rest.sort(key=lambda item: abs(len(item[0]) - len(anchor[0])))
        batch, longest, bound = [anchor], len(anchor[0]), False
        for item in rest:
            if len(batch) == self.cfg.max_batch_texts:
                return batch, True
            width = max(longest, len(item[0]))
            if width * (len(batch) + 1) > self.cfg.max_batch_tokens:
                bound = True  # a shorter text further on may still fit
                continue
            batch.append(item)
            longest = width
        return batch, bound or len(batch) == self.cfg.max_batch_texts

    async def _collect(self) -> list:
        if not self.pending:
            self.pending.append(await self.queue.get())
        deadline = time.perf_counter() + self.cfg.max_wait_ms / 1000
        while True:
            while not self.queue.empty():
                self.pending.append(self.queue.get_nowait())
            batch, full = self._pick()
            remaining = deadline - time.perf_counter()
            if full or remaining <= 0:
                break
            try:
                self.pending.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                continue  # take what is there
        chosen = {id(item) for item in batch}
        self.pending = [item for item in self.pending if id(item) not in chosen]
        return batch

    async def run(self) -> None:
        while True:
            batch = await self._collect()
            self._waiting(-len(batch))
            live = [(ids, fut) for ids, fut in batch if not fut.done()]
            if not live:
                continue
            live.sort(key=lambda x: len(x[0]))
            try:
                probs = await asyncio.to_thread(self.score, [ids for ids, _ in live])
            except Exception as exc:  # a failed call fails its requests, never the worker
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.calls += 1
            if self.metrics:
                self.metrics.batch.observe(len(live))
            for (_, fut), row in zip(live, probs):
                if not fut.done():
                    fut.set_result(row)


def _drop(futures: list) -> None:
    """Cancel the texts nobody waits for any more (timed out, or the client gone: the worker skips
    them), and mark the failures of the others as seen, so asyncio logs none as never retrieved."""
    for fut in futures:
        if not fut.cancel() and not fut.cancelled():
            fut.exception()


class Metrics:
    """Prometheus series of one app (its own registry, so several apps can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("sentiment_lora_requests", "HTTP requests by route and status code",
                                ["route", "code"], registry=self.registry)
        self.errors = Counter("sentiment_lora_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["route", "code"], registry=self.registry)
        self.latency = Histogram("sentiment_lora_request_seconds", "Request latency", ["route"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.batch = Histogram("sentiment_lora_batch_size", "Texts per model call",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.queue = Gauge("sentiment_lora_queue_depth", "Texts waiting to be scored", registry=self.registry)


def parse_inputs(body: bytes, cfg: ServeConfig) -> tuple[list[str], bool, dict]:
    """(texts, whether ``inputs`` was one string, parameters) of a body read_body bounded, or Rejected."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise Rejected(422, 'the body is not valid JSON; send {"inputs": "text"} or {"inputs": ["a", "b"]}',
                       "validation") from None
    if not isinstance(data, dict) or "inputs" not in data:
        raise Rejected(422, 'the body must be a JSON object with "inputs": a text or a list of texts', "validation")
    texts, single = _texts(data["inputs"], cfg)
    return texts, single, _parameters(data)


def _texts(inputs, cfg: ServeConfig) -> tuple[list[str], bool]:
    """The request's texts, each usable by the one text rule (data.text_problem)."""
    from .data import text_problem

    single = isinstance(inputs, str)
    texts = [inputs] if single else inputs
    if not isinstance(texts, list):
        raise Rejected(422, f'"inputs" must be a text or a list of texts, not {type(inputs).__name__}', "validation")
    if not texts:
        raise Rejected(422, '"inputs" is an empty list; send at least one text', "validation")
    if len(texts) > cfg.max_texts_per_request:
        raise Rejected(413, f"{len(texts)} texts in one request, more than the {cfg.max_texts_per_request} allowed; "
                            f"split the request", "payload_too_large")
    for i, t in enumerate(texts):
        problem = text_problem(t)
        if problem is not None:
            raise Rejected(422, f"input {i} {problem}; send non-empty texts", "validation")
    return texts, single


def _parameters(data: dict) -> dict:
    """The TEI / Inference API parameters this server honours (top_k), the others refused."""
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise Rejected(422, '"parameters" must be an object', "validation")
    top_k = params.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise Rejected(422, '"parameters.top_k" must be a whole number of 1 or more', "validation")
    if params.get("function_to_apply") not in (None, "softmax"):
        raise Rejected(422, 'only "function_to_apply": "softmax" is served: the scores are a softmax over the '
                            'label tokens', "validation")
    if data.get("raw_scores"):
        raise Rejected(422, '"raw_scores" is not served: the scores are probabilities', "validation")
    return params


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes: a chunked body declares
    no length, and reading it whole first would let one request hold as much memory as it likes."""
    from starlette.requests import ClientDisconnect

    chunks, size = [], 0
    try:
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > limit:
                    raise Rejected(413, f"the request body has more than the {limit} bytes allowed",
                                   "payload_too_large")
                chunks.append(chunk)
    except ClientDisconnect:
        raise client_gone(request) from None
    return b"".join(chunks)


async def scored_while_connected(request: Request, batcher: Batcher, prompts: list[list[int]]) -> np.ndarray:
    """``batcher.submit(prompts)``, given up if the client hangs up first: its texts leave the
    queue unscored, so a client that stopped waiting costs no model time."""
    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass  # the body is read already: a disconnect is the only message left

    scoring = asyncio.ensure_future(batcher.submit(prompts))
    watching = asyncio.ensure_future(hung_up())
    try:
        done, _ = await asyncio.wait({scoring, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        scoring.cancel()  # a no-op once scored; else its texts are dropped from the queue
        watching.cancel()
    if scoring not in done:
        raise client_gone(request)
    return scoring.result()


def client_gone(request: Request) -> Rejected:
    """A client that closed its connection before the answer: an ordinary event, so one line in
    the log at info level, and a status (499, as nginx counts it) for the metrics only."""
    client = request.client
    logging.getLogger("uvicorn.error").info("%s closed the connection before the answer to %s; its texts were "
                                            "dropped", f"{client.host}:{client.port}" if client else "a client",
                                            request.url.path)
    return Rejected(499, "the client closed the connection", "client_closed")


def failure(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def load_classifier(run_dir: str | Path, device: str = "auto", dtype: str = "auto", precision: str | None = None):
    """The classifier in ``run_dir``, or UserError with why it cannot load: a server without its
    model could only answer 503, so ``serve`` stops on the reason instead."""
    from .classifier import SentimentClassifier
    from .errors import UserError

    try:
        return SentimentClassifier.load(run_dir, device=device, dtype=dtype, precision=precision)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot load the classifier in {run_dir}: {failure(exc)}") from None


def ranked(probs: np.ndarray, words: list[str], top_k: int | None = None) -> list[list[dict]]:
    """For each row, every label with its score, highest first."""
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:top_k]
        out.append([{"label": words[i], "score": float(row[i])} for i in order])
    return out


def error_response(status: int, message: str, kind: str, headers: dict | None = None):
    """The API's one error shape: {"error": one line, "error_type": kind}."""
    from fastapi.responses import JSONResponse

    from .errors import printable

    return JSONResponse({"error": printable(message), "error_type": kind}, status_code=status, headers=headers)


class Service:
    """One classifier's serving state (the model once loaded, or why it failed; the batcher, metrics,
    limits), whose methods the app's routes and middleware call."""

    def __init__(self, run_dir: Path, cfg: ServeConfig, spec, load):
        self.run_dir, self.cfg, self.spec, self.load = run_dir, cfg, spec, load
        self.metrics = Metrics()
        self.clf = None
        self.error: str | None = None
        self.batcher: Batcher | None = None
        self.expected_key = f"Bearer {cfg.api_key}".encode("ascii") if cfg.api_key else b""
        self.model_lock = threading.Lock()
        """Scoring and explaining take turns: an explanation's hook on the embedding layer must never
        see a scoring batch."""

    def load_model(self) -> None:
        try:
            clf = self.load()
        except Exception as exc:  # reported by /health; the process stays up to say so
            self.error = failure(exc)
            return
        if self.cfg.max_batch_tokens is None:
            self.adopt_budget(getattr(clf, "max_batch_tokens", None) or self.spec.max_batch_tokens or 8192)
        self.clf = clf

    def adopt_budget(self, tokens: int) -> None:
        """The loaded classifier's token budget, which depends on the precision it loaded in, for a
        server not told one; set before the first batch can form (none does while loading)."""
        self.cfg = dataclasses.replace(self.cfg, max_batch_tokens=tokens)
        if self.batcher is not None:
            self.batcher.cfg = self.cfg

    def score(self, prompts: list[list[int]]) -> np.ndarray:
        with self.model_lock:
            return self.clf.proba_of_prompts(prompts, batch_size=len(prompts))

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.batcher = Batcher(self.score, self.cfg, self.metrics)
        worker = asyncio.create_task(self.batcher.run())
        threading.Thread(target=self.load_model, daemon=True, name="load-classifier").start()
        yield
        worker.cancel()

    def unavailable(self) -> Rejected:
        return Rejected(503, "the model is still loading" if self.error is None else
                        f"the model failed to load ({self.error})", "unavailable", {"Retry-After": "5"})

    async def observe(self, request: Request, call_next):
        """Every request counted and timed; without the API key (when one is set), a 401."""
        route = request.url.path if request.url.path in ROUTES else "other"
        started = time.perf_counter()
        if self.cfg.api_key and request.url.path != "/health":
            # The bytes sent, not starlette's Latin-1 reading of them.
            given = next((v for k, v in request.scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected_key):
                response = error_response(401, "missing or wrong API key; send the header 'Authorization: Bearer "
                                          "<key>'", "unauthorized", {"WWW-Authenticate": "Bearer"})
                self.count(route, response.status_code, started)
                return response
        response = await call_next(request)
        self.count(route, response.status_code, started)
        return response

    def count(self, route: str, code: int, started: float) -> None:
        self.metrics.requests.labels(route, str(code)).inc()
        if code >= 400:
            self.metrics.errors.labels(route, str(code)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def inputs(self, request: Request) -> tuple[list[str], bool, dict]:
        """The request's texts, whether one was sent, and its parameters, within the body limit."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.cfg.max_body_bytes:
            raise Rejected(413, f"the request body has {declared} bytes, more than the {self.cfg.max_body_bytes} "
                                f"allowed", "payload_too_large")
        return parse_inputs(await read_body(request, self.cfg.max_body_bytes), self.cfg)

    async def probabilities(self, request: Request) -> tuple[np.ndarray, bool, dict, float]:
        """(probabilities, whether one text was sent, parameters, milliseconds scoring) of a request."""
        if self.clf is None:
            raise self.unavailable()
        texts, single, params = await self.inputs(request)
        clf = self.clf
        # Tokenizing and a stack's TF-IDF part run in threads: the event loop only queues.
        prompts = await asyncio.to_thread(clf.encode, texts)  # cleaning and truncation, as in training
        started = time.perf_counter()
        scores = await scored_while_connected(request, self.batcher, prompts)
        probs = await asyncio.to_thread(clf.combine, texts, scores)
        return probs, single, params, (time.perf_counter() - started) * 1000

    async def classify(self, request: Request) -> dict:
        """/classify: the decided label and every probability per text, as predict writes them."""
        from .predict import Record, output_row

        probs, _, _, ms = await self.probabilities(request)
        rows = [output_row(Record(i, None), label, row, self.spec.label_words)
                for i, (label, row) in enumerate(zip(self.clf.labels_of(probs), probs))]
        return {"results": [{"label": r["label"], "probs": r["probs"]} for r in rows], "ms": ms}

    # --- /explain (issue 24): word attributions --------------------------------------------

    async def explain(self, request: Request) -> dict:
        """/explain: ``explain.Explanation.to_dict`` per text, as ``predict --explain`` prints them."""
        from .errors import UserError
        from .explain import require_captum

        if self.clf is None:
            raise self.unavailable()
        texts, _, _ = await self.inputs(request)
        if len(texts) > EXPLAIN_TEXTS:
            raise Rejected(413, f"{len(texts)} texts to explain in one request, more than the {EXPLAIN_TEXTS} "
                                f"allowed; send them in several requests", "payload_too_large")
        try:
            require_captum()
        except UserError as exc:
            raise Rejected(501, str(exc), "not_implemented") from None
        started = time.perf_counter()
        found = await asyncio.to_thread(self._explained, texts)
        return {"results": found, "ms": (time.perf_counter() - started) * 1000}

    def _explained(self, texts: list[str]) -> list[dict]:
        with self.model_lock:
            return [e.to_dict() for e in self.clf.explain(texts)]

    # --- end /explain ---------------------------------------------------------------------

    def info(self) -> dict:
        from .page import facts

        f = facts(self.run_dir, self.spec)
        m, cfg = f["metrics"], self.cfg
        return {**{k: f[k] for k in ("base_model", "base_gguf", "dataset", "labels", "template", "max_length",
                                     "truncation", "threshold", "calibration", "method", "lora")},
                "test_metrics": {k: m.get(k) for k in ("n", "accuracy", "accuracy_ci95", "macro_f1", "roc_auc", "ece")},
                "batching": {"max_batch_texts": cfg.max_batch_texts, "max_batch_tokens": cfg.max_batch_tokens,
                             "max_wait_ms": cfg.max_wait_ms},
                "precision": getattr(self.clf, "precision", None)}


def create_app(run_dir: str | Path, cfg: ServeConfig | None = None, device: str = "auto", dtype: str = "auto",
               load=None, precision: str | None = None):
    """The FastAPI app serving the classifier in ``run_dir``. The model loads in a thread when
    the app starts (``/health`` says 503 until then); ``load`` replaces the loader in tests."""
    from fastapi import FastAPI

    from .classifier import SentimentClassifier
    from .spec import ClassifierSpec

    cfg = cfg or ServeConfig()
    run_dir = Path(run_dir)
    spec = ClassifierSpec.load(run_dir)
    # Unset batch limits come from the classifier: the shape its scoring was tuned for. Its token
    # budget depends on the precision it loads in, so Service.load_model sets it (no batch forms
    # before); a classifier that names none gets 8192.
    if not spec.max_batch_tokens:
        cfg = dataclasses.replace(cfg, max_batch_tokens=cfg.max_batch_tokens or 8192)
    cfg = dataclasses.replace(cfg, max_batch_texts=cfg.max_batch_texts or spec.batch_size)
    service = Service(run_dir, cfg, spec, load or (lambda: SentimentClassifier.load(
        run_dir, device=device, dtype=dtype, precision=precision)))
    app = FastAPI(title="sentiment-lora", lifespan=service.lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve, app.state.metrics = service, service.metrics  # the config: service.cfg (set again on load)
    app.middleware("http")(service.observe)
    _errors(app)
    _routes(app, service)
    return app


def _errors(app) -> None:
    """Every error, expected or not, in the API's one shape."""
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return error_response(exc.status_code, str(exc.detail), "http")

    @app.exception_handler(Rejected)
    async def rejected(request, exc: Rejected):
        return error_response(exc.status, str(exc), exc.kind, exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        return error_response(500, f"internal error: {type(exc).__name__}; the server keeps serving", "internal")


def _routes(app, service: Service) -> None:
    from fastapi.responses import HTMLResponse, Response

    from .page import serving_page

    words, page = service.spec.label_words, serving_page(service.run_dir, service.spec)

    @app.post("/predict")
    async def predict(request: Request):
        probs, single, params, _ = await service.probabilities(request)
        out = ranked(probs, words, params.get("top_k"))
        return out[0] if single else out

    @app.post("/")
    async def inference_api(request: Request):
        probs, _, params, _ = await service.probabilities(request)
        return ranked(probs, words, params.get("top_k"))

    app.post("/classify")(service.classify)
    app.post("/explain")(service.explain)

    @app.get("/health")
    async def health():
        if service.clf is None:
            raise service.unavailable()
        return {"status": "ok"}

    app.get("/info")(service.info)

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def index():
        return HTMLResponse(page)


ROUTES = {"/", "/predict", "/classify", "/explain", "/health", "/info", "/metrics"}
EXPLAIN_TEXTS = 4
"""Texts one /explain request may hold: each costs ``explain.N_STEPS`` forward and backward
passes while the model is held, so a request stays a few explanations long."""


def serve(run_dir: str | Path, cfg: ServeConfig, device: str = "auto", dtype: str = "auto",
          log_level: str = "warning", precision: str | None = None) -> None:
    """Load the classifier, then serve until Ctrl-C or SIGTERM; then stop accepting, finish what
    is in flight, return. A classifier that cannot load is UserError before anything listens."""
    import uvicorn

    from .signals import served

    print(f"loading {run_dir} ...", flush=True)
    clf = load_classifier(run_dir, device=device, dtype=dtype, precision=precision)
    app = create_app(run_dir, cfg, load=lambda: clf)
    print(f"serving {run_dir} on http://{cfg.host}:{cfg.port} (the page at /, the API at /predict); "
          f"Ctrl-C stops it", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level,
                                           access_log=log_level in ("info", "debug")))
    with served():  # uvicorn handles Ctrl-C and SIGTERM itself: see signals.served
        server.run()
    print("stopped", flush=True)
