"""The server under load, on loopback: (a) as shipped, (b) with batching off, (c) offline scoring.

For (a) and (b) a ``sentiment-lora serve`` process each is started on 127.0.0.1. At C=1 every
review is sent to both servers in turn (order alternating), so the machine's slow moments
fall on both alike; at C=32, 32 concurrent async httpx clients, each sending one IMDB test
review per request to ``/predict``, drive one server, then the other, until a fixed number
of requests is answered (or a time bound passes). (c) scores the same reviews in this
process with ``SentimentClassifier.predict_proba``: the ceiling. The servers are stopped
before (c) starts.

    python benchmarks/bench_serve.py runs/demo --dataset ../shared/imdb

Writes benchmarks/results/serve-cpu.json: {"a": {"1": {...}, "32": {...}}, "b": {...}, "c": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from common import dataset_record
from sentiment_lora.precision import this_cpu

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reviews(dataset: str, n: int, seed: int) -> list[str]:
    """``n`` texts of the test split, a seeded random sample (IMDB is sorted by label)."""
    from sentiment_lora.config import DataConfig
    from sentiment_lora.data import clean_text, load_splits

    cfg = DataConfig(dataset=dataset, train_size=None, test_size=None)
    texts = [t for t in load_splits(cfg, ["test"])["test"]["text"] if isinstance(t, str) and t.strip()]
    idx = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [clean_text(texts[i]) for i in idx]


def batch_totals(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    total = float(re.search(r"^sentiment_lora_batch_size_sum ([\d.e+]+)$", text, re.M).group(1))
    count = float(re.search(r"^sentiment_lora_batch_size_count ([\d.e+]+)$", text, re.M).group(1))
    return total, count


async def drive(url: str, texts: list[str], concurrency: int, max_seconds: float) -> dict:
    latencies, errors = [], 0
    queue = list(texts)
    started = time.perf_counter()

    async def client(http: httpx.AsyncClient):
        nonlocal errors
        while queue and time.perf_counter() - started < max_seconds:
            text = queue.pop()
            t0 = time.perf_counter()
            try:
                r = await http.post(url + "/predict", json={"inputs": text})
                ok = r.status_code == 200 and len(r.json()) == 2
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=max_seconds, limits=limits) as http:
        await asyncio.gather(*[client(http) for _ in range(concurrency)])
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies) + errors, "reviews_per_s": round(len(latencies) / wall, 3),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "errors": errors, "seconds": round(wall, 2)}


def start_server(run_dir: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "sentiment_lora.cli", "serve", run_dir, "--port", str(port),
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()}")
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def summary(latencies: list[float], errors: int, wall: float, batches: tuple) -> dict:
    ms = np.array(latencies) * 1000
    calls = batches[1]
    return {"requests": len(latencies) + errors, "reviews_per_s": round(len(latencies) / wall, 3),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "errors": errors, "seconds": round(wall, 2),
            "mean_batch": round(batches[0] / calls, 2) if calls else None, "model_calls": int(calls)}


def one_at_a_time(urls: dict[str, str], texts: list[str]) -> dict:
    """C=1 for several servers at once: each review goes to every server in turn (the order
    alternating), so slow and fast moments of the machine fall on all of them alike."""
    lat = {name: [] for name in urls}
    errors = dict.fromkeys(urls, 0)
    before = {name: batch_totals(url) for name, url in urls.items()}
    with httpx.Client(timeout=120) as http:
        for i, text in enumerate(texts):
            names = list(urls) if i % 2 == 0 else list(reversed(urls))
            for name in names:
                t0 = time.perf_counter()
                r = http.post(urls[name] + "/predict", json={"inputs": text})
                if r.status_code == 200 and len(r.json()) == 2:
                    lat[name].append(time.perf_counter() - t0)
                else:
                    errors[name] += 1
    out = {}
    for name, url in urls.items():
        after = batch_totals(url)
        delta = (after[0] - before[name][0], after[1] - before[name][1])
        out[name] = summary(lat[name], errors[name], sum(lat[name]), delta)
    return out


def under_load(url: str, texts: list[str], concurrency: int, max_seconds: float) -> dict:
    before = batch_totals(url)
    result = asyncio.run(drive(url, texts, concurrency, max_seconds))
    after = batch_totals(url)
    calls = after[1] - before[1]
    result["mean_batch"] = round((after[0] - before[0]) / calls, 2) if calls else None
    result["model_calls"] = int(calls)
    return result


def measure_offline(run_dir: str, texts: list[str], warmup: list[str], precision: str | None = None) -> dict:
    import torch

    from sentiment_lora.classifier import SentimentClassifier

    clf = SentimentClassifier.load(run_dir, device="cpu", precision=precision)
    clf.predict_proba(warmup)
    started = time.perf_counter()
    with torch.inference_mode():
        clf.predict_proba(texts)
    wall = time.perf_counter() - started
    return {"requests": len(texts), "reviews_per_s": round(len(texts) / wall, 3), "p50_ms": None, "p95_ms": None,
            "p99_ms": None, "errors": 0, "seconds": round(wall, 2), "mean_batch": None,
            "note": f"one predict_proba call over all {len(texts)} reviews (length-sorted batches of at most "
                    f"{clf.batch_size} reviews and {clf.max_batch_tokens} padded tokens); no per-request latency"}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default="runs/demo")
    ap.add_argument("--dataset", default="../shared/imdb")
    ap.add_argument("--requests", type=int, default=128, help="reviews sent at C=32 and scored offline")
    ap.add_argument("--requests-c1", type=int, default=48, help="reviews sent at C=1 (to each server)")
    ap.add_argument("--max-seconds", type=float, default=240, help="time bound of each load")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--short-dataset", help="also measure short texts (e.g. ../shared/sst5 sentences) at C=32")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"],
                    help="the servers' and the offline scorer's --precision (default: the classifier's own)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve-cpu.json"))
    return ap.parse_args()


def both_servers(args, given: list[str]) -> dict:
    """(a) as shipped and (b) with batching off, on the same run."""
    return {"a": start_server(args.run_dir, given), "b": start_server(args.run_dir, [*given, "--max-batch-texts", "1"])}


def long_reviews(args, given: list[str], warmup: list[str], loads: dict) -> dict:
    results = {"a": {}, "b": {}}
    servers = both_servers(args, given)
    try:
        urls = {name: url for name, (_, url) in servers.items()}
        for url in urls.values():  # first calls pay one-off costs
            asyncio.run(drive(url, warmup, 4, args.max_seconds))
        print("C=1: (a) as shipped and (b) batching off, each review sent to both in turn", flush=True)
        for name, result in one_at_a_time(urls, loads[1]).items():
            results[name]["1"] = result
            print(f"  ({name}) {result}", flush=True)
        for name in ("a", "b"):
            print(f"C=32: ({name})", flush=True)
            results[name]["32"] = under_load(urls[name], loads[32], 32, args.max_seconds)
            print(f"  {results[name]['32']}", flush=True)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    print("(c) offline scoring of the same reviews", flush=True)
    results["c"] = measure_offline(args.run_dir, loads[32], warmup, args.precision)
    print(f"  {results['c']}")
    return results


def short_texts(args, given: list[str]) -> dict:
    """Where batching pays on a CPU: short texts, whose model calls are mostly fixed overhead."""
    short = reviews(args.short_dataset, args.requests + 8, args.seed)
    results = {"dataset": dataset_record(args.short_dataset)}
    servers = both_servers(args, given)
    try:
        for name, (_, url) in servers.items():
            asyncio.run(drive(url, short[:8], 4, args.max_seconds))
            results[name] = {"32": under_load(url, short[8:], 32, args.max_seconds)}
            print(f"short texts, C=32 ({name}): {results[name]['32']}", flush=True)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    results["c"] = measure_offline(args.run_dir, short[8:], short[:8], args.precision)
    print(f"short texts, offline: {results['c']}", flush=True)
    return results


def ratios(results: dict) -> dict:
    a, b, c = results["a"]["32"], results["b"]["32"], results["c"]
    out = {"a_over_c_at_32": round(a["reviews_per_s"] / c["reviews_per_s"], 3),
           "a_over_b_at_32": round(a["reviews_per_s"] / b["reviews_per_s"], 3),
           "a_minus_b_p50_ms_at_1": round(results["a"]["1"]["p50_ms"] - results["b"]["1"]["p50_ms"], 1),
           "c_over_b_at_32": round(c["reviews_per_s"] / b["reviews_per_s"], 3)}
    if "short" in results:
        short = results["short"]
        out["short_a_over_b_at_32"] = round(short["a"]["32"]["reviews_per_s"] / short["b"]["32"]["reviews_per_s"], 3)
        out["short_a_over_c_at_32"] = round(short["a"]["32"]["reviews_per_s"] / short["c"]["reviews_per_s"], 3)
    return out


def main() -> None:
    args = parse_args()
    given = ["--precision", args.precision] if args.precision else []
    texts = reviews(args.dataset, args.requests + 8, args.seed)
    warmup, texts = texts[:8], texts[8:]
    loads = {1: texts[: args.requests_c1], 32: texts}
    results = long_reviews(args, given, warmup, loads)
    if args.short_dataset:
        results["short"] = short_texts(args, given)
    results["summary"] = ratios(results)
    results["setup"] = {"run_dir": args.run_dir, "dataset": dataset_record(args.dataset), "requests_at_32": len(texts),
                        "requests_at_1": len(loads[1]), "machine": platform.platform(),
                        "cpus": os.cpu_count(), "python": platform.python_version(),
                        "precision": args.precision, "cpu": this_cpu().to_dict()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"]))


if __name__ == "__main__":
    main()
