"""Probabilities of a run folder against its exports, on the same balanced sample of test reviews.

    python benchmarks/export_parity.py runs/demo exported/demo-merged exported/demo-adapter \\
        --dataset ../shared/imdb --limit 200
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.data import balanced_indices, label_mapper, load_splits, prepare_split


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("exports", nargs="+")
    ap.add_argument("--dataset")
    ap.add_argument("--limit", type=int, default=200)
    args = ap.parse_args(argv)

    run = SentimentClassifier.load(args.run_dir, merge=False)  # the adapter as trained
    cfg = run.data_config(args.dataset)
    raw = load_splits(cfg, [cfg_split := "test"])[cfg_split]
    sample = prepare_split(raw, cfg_split, cfg, label_mapper(cfg, run.label_words))
    sample = sample.take(balanced_indices(sample.labels, args.limit, len(run.label_words), np.random.default_rng(42)))
    want = run.predict_proba(sample.texts)
    for folder in [args.run_dir, *args.exports]:
        got = SentimentClassifier.load(folder).predict_proba(sample.texts)
        same = np.mean(np.array(run.labels_of(got)) == np.array(run.labels_of(want)))
        print(f"{folder}: max |p - p_run| {np.abs(got - want).max():.2e} on {len(sample)} reviews, "
              f"same labels {100 * same:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
