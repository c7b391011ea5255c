"""`predict --engine ray` (Ray Data, N actors) against `predict --file --output` (one process).

The same N balanced, seeded test reviews (the sample `sentiment-lora evaluate RUN --limit N`
scores) are written to one parquet file with an id column; each side is run as the command a
user types, in a fresh process, and timed from start to exit: loading the classifier (once
per actor on the Ray side), starting the local Ray instance, reading, scoring and writing are
all counted. On a 2-core machine two actors cannot show scale-out; the ratio shows Ray's
overhead. The two sides' labels are compared row by row through the ids.

    python benchmarks/bench_ray.py runs/demo --dataset ../shared/imdb --limit 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--dataset")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64, help="rows per Ray Data batch")
    ap.add_argument("--out", default="benchmarks/results/ray-cpu.json")
    args = ap.parse_args(argv)

    import pandas as pd
    import pyarrow.parquet as pq

    from sentiment_lora.config import DataConfig
    from sentiment_lora.data import balanced_indices, label_mapper, load_splits, prepare_split
    from sentiment_lora.precision import this_cpu
    from sentiment_lora.spec import ClassifierSpec

    spec = ClassifierSpec.load(args.run_dir)
    data = {k: spec.data[k] for k in ("dataset", "subset", "text_column", "label_column", "label_values", "clean_html")
            if k in spec.data}
    if args.dataset:
        data["dataset"] = args.dataset
    cfg = DataConfig(**data, train_size=None, test_size=None)
    raw = load_splits(cfg, [args.split])[args.split]
    sample = prepare_split(raw, args.split, cfg, label_mapper(cfg, spec.label_words))
    sample = sample.take(balanced_indices(sample.labels, args.limit, len(spec.label_words),
                                          np.random.default_rng(42)))
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    src = tmp / "reviews.parquet"
    pd.DataFrame({"id": list(sample.ids), "text": sample.texts}).to_parquet(src)

    cli = [sys.executable, "-m", "sentiment_lora.cli", "predict", args.run_dir, "--file", str(src), "--device", "cpu"]
    sides = {"one_process": cli + ["--output", str(tmp / "one.jsonl"), "--id-field", "id"],
             "ray": cli + ["--engine", "ray", "--output", str(tmp / "ray"), "--concurrency", str(args.actors),
                           "--chunk-size", str(args.batch_size)]}
    seconds = {}
    for name, cmd in sides.items():
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds[name] = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        print(f"{name}: {seconds[name]:.1f} s", file=sys.stderr)

    one = {json.loads(x)["id"]: json.loads(x)["label"] for x in (tmp / "one.jsonl").read_text().splitlines()}
    ray = pd.concat([pq.read_table(f).to_pandas() for f in sorted((tmp / "ray").glob("*.parquet"))])
    agree = float(np.mean([one[i] == label for i, label in zip(ray["id"], ray["label"])]))
    result = {"run_dir": args.run_dir, "n": len(sample), "actors": args.actors, "batch_size": args.batch_size,
              "one_process_seconds": round(seconds["one_process"], 1), "ray_seconds": round(seconds["ray"], 1),
              "ray_over_one_process": round(seconds["ray"] / seconds["one_process"], 3),
              "rows_written": {"one_process": len(one), "ray": len(ray)}, "label_agreement": agree,
              "ray_shards": len(list((tmp / "ray").glob("*.parquet"))), "cpu": this_cpu().to_dict()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
