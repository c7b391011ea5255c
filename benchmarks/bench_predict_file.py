"""Streaming `predict --file --output` against `evaluate`'s scoring, on the same reviews.

One process, one loaded classifier. The reviews are the balanced seeded sample that
`sentiment-lora evaluate RUN --limit N` scores; they are written to a .jsonl file, then
alternately (a) scored the way `evaluate` does (`predict_proba` over the whole list, one
length-sorted pass) and (b) streamed from the file to an output file by `predict_file`
(chunks, length-sorted within each chunk, lines appended and fsync'ed). Texts per second
include tokenization on both sides, and reading and writing the files on side (b).

    python benchmarks/bench_predict_file.py runs/demo --dataset ../shared/imdb --limit 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.data import balanced_indices, label_mapper, load_splits, prepare_split
from sentiment_lora.precision import this_cpu
from sentiment_lora.predict import predict_file


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--dataset")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--out", default="benchmarks/results/predict-file-cpu.json")
    args = ap.parse_args(argv)

    clf = SentimentClassifier.load(args.run_dir)
    cfg = clf.data_config(args.dataset)
    raw = load_splits(cfg, [args.split])[args.split]
    sample = prepare_split(raw, args.split, cfg, label_mapper(cfg, clf.label_words))
    sample = sample.take(balanced_indices(sample.labels, args.limit, len(clf.label_words), np.random.default_rng(42)))
    tmp = Path(tempfile.mkdtemp(prefix="bench-predict-file-"))
    src = tmp / "reviews.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample.texts))

    evaluate_rates, stream_rates, agree = [], [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        probs = clf.predict_proba(sample.texts)
        evaluate_rates.append(len(sample) / (time.perf_counter() - start))
        out = tmp / f"out-{r}.jsonl"
        start = time.perf_counter()
        predict_file(clf, src, out, chunk_size=args.chunk_size, progress=False)
        stream_rates.append(len(sample) / (time.perf_counter() - start))
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        agree.append(float(np.mean([row["label"] == label for row, label in zip(rows, clf.labels_of(probs))])))
        print(f"repeat {r + 1}: evaluate {evaluate_rates[-1]:.2f} texts/s, predict --file {stream_rates[-1]:.2f} "
              f"texts/s", flush=True)
    med = statistics.median
    result = {"run_dir": args.run_dir, "reviews": len(sample), "repeats": args.repeats, "chunk_size": args.chunk_size,
              "evaluate_texts_per_s": [round(x, 3) for x in evaluate_rates],
              "predict_file_texts_per_s": [round(x, 3) for x in stream_rates],
              "evaluate_median": round(med(evaluate_rates), 3), "predict_file_median": round(med(stream_rates), 3),
              "ratio": round(med(stream_rates) / med(evaluate_rates), 3), "label_agreement": min(agree),
              "cpu": this_cpu().to_dict()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"predict --file: {result['predict_file_median']:.2f} texts/s, evaluate: {result['evaluate_median']:.2f} "
          f"texts/s, ratio {result['ratio']:.3f}; same labels on {100 * result['label_agreement']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
