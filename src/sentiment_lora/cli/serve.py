"""``sentiment-lora serve``: a classifier over HTTP (API, web page, metrics)."""

from __future__ import annotations

import os

from .common import add_run_dir, add_runtime, add_verb, positive_int, usage


def add(sub, parents: list) -> None:
    p = add_verb(sub, "serve", parents, "serve a classifier over HTTP: API, web page, metrics", run,
                 example="sentiment-lora serve runs/demo --port 8000")
    add_run_dir(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health "
                   "(default: $SENTIMENT_LORA_API_KEY, else no key)")
    p.add_argument("--max-batch-texts", type=positive_int, help="most texts per model call (default: the "
                   "classifier's eval batch size)")
    p.add_argument("--max-batch-tokens", type=positive_int, help="most padded tokens per model call (default: "
                   "the classifier's max_batch_tokens, else 8192)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="wait for more texts before scoring")
    p.add_argument("--max-queue", type=positive_int, default=1024, help="texts waiting before 503")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds before a waiting request gets 504")
    p.add_argument("--max-texts-per-request", type=positive_int, default=64, help="more inputs get 413")
    p.add_argument("--max-body-bytes", type=positive_int, default=1_000_000, help="a larger body gets 413")
    add_runtime(p, batch=False)


def run(args) -> int:
    from ..serve import ServeConfig, serve
    from ..spec import ClassifierSpec

    key = args.api_key if args.api_key is not None else os.environ.get("SENTIMENT_LORA_API_KEY")
    cfg = ServeConfig(host=args.host, port=args.port, max_batch_texts=args.max_batch_texts,
                      max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
                      max_queue=args.max_queue, request_timeout_s=args.request_timeout,
                      max_texts_per_request=args.max_texts_per_request, max_body_bytes=args.max_body_bytes,
                      api_key=key)
    ClassifierSpec.load(args.run_dir)  # a damaged folder is one line before the server starts
    check_port(cfg.host, cfg.port)
    serve(args.run_dir, cfg, device=args.device, dtype=args.dtype, log_level="info" if args.verbose else "warning",
          precision=args.precision)
    return 0


def check_port(host: str, port: int) -> None:
    """The address can be listened on, checked before the model loads (a minute, on a CPU)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        raise usage(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None
