"""Trial: does another baseline token let integrated gradients meet the completeness tolerance
within the first try's steps? The shipped ``explain`` runs on balanced demo test reviews with each
review token of the baseline replaced by one candidate token (the template kept, as shipped),
at one step count, no retry; reports how many explanations are faithful, the median |delta| and
the seconds per review.

    python benchmarks/explain_baselines.py runs/demo --dataset ../shared/imdb --n 8 --steps 16

Results go to benchmarks/results/explain-baselines-cpu.json with the processor and its flags.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import sentiment_lora.explain as explanation
from bench_explain import sample
from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.precision import this_cpu
from sentiment_lora.storage import write_json

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {"pad": None, "space": " ", "dot": ".", "the": " the"}


def with_token(token_id: int | None):
    """``explain.baseline_ids`` with ``token_id`` (None: the shipped pad token) in each review position."""
    shipped = explanation.baseline_ids

    def baseline(clf, ids, positions):
        if token_id is None:
            return shipped(clf, ids, positions)
        return [token_id if i in set(positions) else t for i, t in enumerate(ids)]

    return baseline


def trial(clf, texts: list[str], token_id: int | None, steps: int) -> dict:
    shipped = explanation.baseline_ids
    explanation.baseline_ids = with_token(token_id)
    try:
        started, deltas = time.perf_counter(), []
        for text in texts:
            deltas.append(abs(explanation.explain(clf, [text], n_steps=steps, max_steps=steps)[0].delta))
    finally:
        explanation.baseline_ids = shipped
    d = np.array(deltas)
    return {"token_id": token_id, "faithful": int((d <= explanation.TOLERANCE).sum()), "n": len(d),
            "median_abs_delta": round(float(np.median(d)), 4),
            "s_per_review": round((time.perf_counter() - started) / len(d), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a trained classifier (the demo run)")
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared/imdb"))
    ap.add_argument("--n", type=int, default=8, help="test reviews (balanced)")
    ap.add_argument("--steps", type=int, default=explanation.N_STEPS, help="integral steps, no retry")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/explain-baselines-cpu.json"))
    args = ap.parse_args(argv)
    clf = SentimentClassifier.load(args.run_dir, device="cpu")
    texts = sample(clf, args.dataset, args.n, seed=3).texts
    result = {"cpu": this_cpu().to_dict(), "threads": torch.get_num_threads(), "steps": args.steps,
              "tolerance": explanation.TOLERANCE, "command": "python benchmarks/explain_baselines.py "
              f"RUN --n {args.n} --steps {args.steps}", "baselines": {}}
    for name, text in CANDIDATES.items():
        ids = None if text is None else clf.tokenizer.encode(text, add_special_tokens=False)
        if ids is not None and len(ids) != 1:
            continue  # not one token: no one-for-one replacement
        result["baselines"][name] = trial(clf, texts, None if ids is None else ids[0], args.steps)
        print(name, result["baselines"][name], flush=True)
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
