"""Scoring speed trials on this machine: model-FLOP utilisation (MFU) and label agreement.

Scores the same IMDB test reviews with the demo classifier at 512-token inputs (the
setting of bench_speed.py) under each variant:

- baseline: the LoRA adapter unmerged, sdpa attention, batches of 4 texts, torch's default
  threads (the CPU preset before these trials);
- eager attention; 1 thread; batches of 1;
- batches by a token budget (rows x longest prompt) instead of a count;
- LoRA merged into the base weights for inference (peft ``merge_and_unload``);
- ``torch.compile`` (dynamic shapes) of the merged model.

Each variant's model is built and warmed up once (the warm-up time is reported: for
torch.compile it is the compilation); then rounds run every variant in turn, so drift of
this shared machine hits all of them alike, and medians are reported. MFU is useful model
FLOPs (perf.sequence_flops: block matmuls and causal attention per real token) per second
over the fp32 matmul limit measured in the same run. Agreement compares each variant's
labels with the baseline's.

    python benchmarks/bench_scoring.py runs/demo --dataset ../shared/imdb
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.config import PromptConfig
from sentiment_lora.data import balanced_indices, label_mapper, load_splits, prepare_split
from sentiment_lora.decision import decide
from sentiment_lora.perf import matmul_flops, sequence_flops
from sentiment_lora.precision import this_cpu
from sentiment_lora.prompt import Prompt
from sentiment_lora.scoring import score


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--dataset")
    ap.add_argument("--reviews", type=int, default=48)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], help="leave out variants whose name contains any of these")
    ap.add_argument("--out", default="benchmarks/results/scoring-cpu.json")
    args = ap.parse_args(argv)

    clf = SentimentClassifier.load(args.run_dir, device="cpu", dtype="float32", merge=False)
    cfg = clf.data_config(args.dataset)
    raw = load_splits(cfg, ["test"])["test"]
    sample = prepare_split(raw, "test", cfg, label_mapper(cfg, clf.label_words))
    sample = sample.take(balanced_indices(sample.labels, args.reviews, 2, np.random.default_rng(7)))
    prompt = Prompt(clf.tokenizer, PromptConfig(**{**clf.prompt.cfg.__dict__, "max_length": args.max_length}))
    ids = prompt.encode(sample.texts).input_ids
    useful = sequence_flops(clf.model.get_base_model().config, [len(x) for x in ids])
    labels, pad = clf.prompt.label_token_ids, clf.tokenizer.pad_token_id
    threads = torch.get_num_threads()

    def merged():
        return copy.deepcopy(clf.model).merge_and_unload().eval()

    def eager():
        m = copy.deepcopy(clf.model)
        m.get_base_model().set_attn_implementation("eager")
        return m

    def compiled():
        torch._dynamo.reset()
        m = merged()
        m.forward = torch.compile(m.forward, dynamic=True)
        return m

    # name: (build the model, batch size, token budget, threads)
    variants = {
        f"baseline (adapter, sdpa, batch 4, {threads} threads)": (lambda: clf.model, 4, None, threads),
        "eager attention": (eager, 4, None, threads),
        "1 thread": (lambda: clf.model, 4, None, 1),
        "batch 1": (lambda: clf.model, 1, None, threads),
        "token budget 1024 (<= 16 texts)": (lambda: clf.model, 16, 1024, threads),
        "LoRA merged": (merged, 4, None, threads),
        "LoRA merged + token budget 768": (merged, 16, 768, threads),
        "LoRA merged + token budget 1024 (new default)": (merged, 16, 1024, threads),
        "LoRA merged + token budget 1536": (merged, 16, 1536, threads),
        "LoRA merged + torch.compile": (compiled, 4, None, threads),
        "LoRA merged + token budget 1024 + torch.compile": (compiled, 16, 1024, threads),
    }
    variants = {k: v for k, v in variants.items() if not any(s in k for s in args.skip)}

    def run(model, batch, budget, n_threads, texts):
        torch.set_num_threads(n_threads)
        try:
            return score(model, texts, labels, pad, batch, max_tokens=budget)
        finally:
            torch.set_num_threads(threads)

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    warm = [ids[i] for i in order[-16:] + order[:16]]  # the longest and shortest shapes
    models, warmup = {}, {}
    for name, (build, batch, budget, n) in variants.items():
        start = time.perf_counter()
        models[name] = build()
        run(models[name], batch, budget, n, warm)
        warmup[name] = time.perf_counter() - start
        print(f"built and warmed up {name} in {warmup[name]:.0f} s", flush=True)

    limit, _ = matmul_flops(torch.device("cpu"))
    seconds = {name: [] for name in variants}
    probs = {}
    for r in range(args.rounds):
        for name, (_, batch, budget, n) in variants.items():
            start = time.perf_counter()
            probs[name] = run(models[name], batch, budget, n, ids)
            seconds[name].append(time.perf_counter() - start)
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    limit = max(limit, matmul_flops(torch.device("cpu"))[0])  # the limit at its best, before and after

    ref = probs[next(iter(variants))]
    rows = []
    for name in variants:
        s = statistics.median(seconds[name])
        agree = decide(probs[name], clf.threshold) == decide(ref, clf.threshold)
        rows.append({"variant": name, "warmup_s": round(warmup[name], 1),
                     "seconds": [round(x, 2) for x in seconds[name]],
                     "reviews_per_s": round(len(ids) / s, 3), "mfu": round(useful / s / limit, 4),
                     "label_agreement": float(agree.mean()),
                     "max_prob_diff": float(np.abs(probs[name] - ref).max())})
    base = rows[0]["reviews_per_s"]
    print(f"\n{len(ids)} reviews, {sum(map(len, ids))} tokens, fp32 matmul limit {limit / 1e9:.0f} GFLOP/s, "
          f"medians of {args.rounds} rounds\n")
    print("| variant | reviews/s | vs baseline | MFU | label agreement | max prob diff | warm-up s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['reviews_per_s']:.2f} | {row['reviews_per_s'] / base:.2f}x | "
              f"{100 * row['mfu']:.1f}% | {100 * row['label_agreement']:.1f}% | {row['max_prob_diff']:.1e} | "
              f"{row['warmup_s']:.0f} |")
    result = {"reviews": len(ids), "tokens": sum(map(len, ids)), "max_length": args.max_length, "rounds": args.rounds,
              "matmul_limit_gflops": round(limit / 1e9, 1), "threads": threads,
              "machine": platform.processor() or platform.machine(), "cpu": this_cpu().to_dict(), "variants": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
