"""Peak memory against the size of one input: a long line for `predict --file`, a large
chunked body for the server.

    python benchmarks/bench_memory.py RUN_DIR [--out benchmarks/results/memory-cpu.json]

- Lines: one text file per size (1 KB, 9 MB, 50 MB, 200 MB by default), each holding one
  line of words; `predict RUN --file F --output O` runs in a child process, which reports
  its own peak RSS (``ru_maxrss``). Lines over `--max-line-bytes` (10 MB) become error rows.
- Body: `serve RUN` in a child process gets one `POST /predict` whose body is sent with
  `Transfer-Encoding: chunked` (no Content-Length), 500 MB against the default 1 MB
  `--max-body-bytes`; the figure is the server's peak RSS during the request (VmHWM after
  resetting it) less its RSS before.

To measure another version of the package, put its `src` first on PYTHONPATH: the child
processes inherit it. Nothing here asserts a figure; it measures and records.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "the movie was a great and wonderful film but the plot felt dull at times while the acting".split()
_PEAK = """
import resource, sys
from sentiment_lora.cli import main
code = main(sys.argv[1:])
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code, file=sys.stderr)
"""


def write_line(path: Path, size: int) -> None:
    rng = random.Random(0)
    block = " ".join(rng.choice(WORDS) for _ in range(200_000)).encode()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[:left])
            left -= len(block)
        f.write(b"\n")


def predict_peak(run: str, path: Path, out: Path) -> dict:
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _PEAK, "predict", run, "--file", str(path), "--output", str(out),
                        "--device", "cpu"], capture_output=True, text=True, timeout=1800)
    peak = [line.split() for line in r.stderr.splitlines() if line.startswith("PEAK")]
    if not peak:
        return {"error": r.stderr.strip().splitlines()[-1:] or [f"exit {r.returncode}"]}
    row = json.loads(out.read_text().splitlines()[0])
    return {"peak_rss_mb": round(int(peak[0][1]) / 1024, 1), "exit": int(peak[0][2]),
            "seconds": round(time.perf_counter() - started, 1), "label": row["label"], "error": row.get("error")}


def lines(run: str, sizes: list[int]) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"line-{size}.txt"
            write_line(path, size)
            out[str(size)] = predict_peak(run, path, Path(tmp) / f"out-{size}.jsonl")
            path.unlink()
            print(f"line of {size:,} bytes: {out[str(size)]}", flush=True)
    return out


def _status_kb(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _post(port: int, body, timeout: float = 600) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _chunks(size: int, chunk: int = 1 << 16):
    yield b'{"inputs": "'
    for _ in range(size // chunk):
        yield b"a" * chunk
    yield b'"}'


def _wait_up(port: int, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if _post(port, b'{"inputs": "a fine film"}', timeout=30)[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not come up")


def chunked_body(run: str, size: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sentiment_lora.cli", "serve", run, "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_up(port)
        before = _status_kb(proc.pid, "VmRSS")
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        started = time.perf_counter()
        status, _ = _post(port, _chunks(size))
        seconds = time.perf_counter() - started
        peak = _status_kb(proc.pid, "VmHWM")
        after = _post(port, b'{"inputs": "a fine film"}')[0]
    finally:
        proc.kill()
        proc.wait(30)
    result = {"body_bytes": size, "status": status, "rss_before_mb": round(before / 1024, 1),
              "peak_growth_mb": round((peak - before) / 1024, 1), "seconds": round(seconds, 1),
              "serves_after": after == 200}
    print(f"chunked body of {size:,} bytes: {result}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--sizes", default="1000,9000000,50000000,200000000", help="line lengths in bytes")
    ap.add_argument("--body-bytes", type=int, default=500_000_000)
    ap.add_argument("--out", default="benchmarks/results/memory-cpu.json")
    args = ap.parse_args()
    import sentiment_lora
    from sentiment_lora.precision import this_cpu

    result = {"cpu": {**this_cpu().to_dict(), "cores": os.cpu_count()},
              "package": str(Path(sentiment_lora.__file__).parent), "run_dir": args.run_dir,
              "lines": lines(args.run_dir, [int(x) for x in args.sizes.split(",")]),
              "chunked_body": chunked_body(args.run_dir, args.body_bytes)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
