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


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--dataset")
    ap.add_argument("--reviews", type=int, default=48)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], help="leave out variants whose name contains any of these")
    ap.add_argument("--out", default="benchmarks/results/scoring-cpu.json")
    return ap.parse_args(argv)


class Trials:
    """The classifier, the reviews' prompts and each variant's model, timings and probabilities."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.clf = clf = SentimentClassifier.load(args.run_dir, device="cpu", dtype="float32", merge=False)
        cfg = clf.data_config(args.dataset)
        sample = prepare_split(load_splits(cfg, ["test"])["test"], "test", cfg, label_mapper(cfg, clf.label_words))
        sample = sample.take(balanced_indices(sample.labels, args.reviews, 2, np.random.default_rng(7)))
        prompt = Prompt(clf.tokenizer, PromptConfig(**{**clf.prompt.cfg.__dict__, "max_length": args.max_length}))
        self.ids = prompt.encode(sample.texts).input_ids
        self.useful = sequence_flops(clf.model.get_base_model().config, [len(x) for x in self.ids])
        self.threads = torch.get_num_threads()
        self.variants = {k: v for k, v in self.variant_table().items() if not any(s in k for s in args.skip)}
        self.models, self.warmup, self.probs = {}, {}, {}
        self.seconds = {name: [] for name in self.variants}

    def merged(self):
        return copy.deepcopy(self.clf.model).merge_and_unload().eval()

    def eager(self):
        m = copy.deepcopy(self.clf.model)
        m.get_base_model().set_attn_implementation("eager")
        return m

    def compiled(self):
        torch._dynamo.reset()
        m = self.merged()
        m.forward = torch.compile(m.forward, dynamic=True)
        return m

    def variant_table(self) -> dict:
        """name: (build the model, batch size, token budget, threads)."""
        adapter, threads = (lambda: self.clf.model), self.threads
        return {
            f"baseline (adapter, sdpa, batch 4, {threads} threads)": (adapter, 4, None, threads),
            "eager attention": (self.eager, 4, None, threads),
            "1 thread": (adapter, 4, None, 1),
            "batch 1": (adapter, 1, None, threads),
            "token budget 1024 (<= 16 texts)": (adapter, 16, 1024, threads),
            "LoRA merged": (self.merged, 4, None, threads),
            "LoRA merged + token budget 768": (self.merged, 16, 768, threads),
            "LoRA merged + token budget 1024 (new default)": (self.merged, 16, 1024, threads),
            "LoRA merged + token budget 1536": (self.merged, 16, 1536, threads),
            "LoRA merged + torch.compile": (self.compiled, 4, None, threads),
            "LoRA merged + token budget 1024 + torch.compile": (self.compiled, 16, 1024, threads),
        }

    def run(self, name: str, texts) -> np.ndarray:
        _, batch, budget, n_threads = self.variants[name]
        torch.set_num_threads(n_threads)
        try:
            return score(self.models[name], texts, self.clf.prompt.label_token_ids, self.clf.tokenizer.pad_token_id,
                         batch, max_tokens=budget)
        finally:
            torch.set_num_threads(self.threads)

    def build_all(self) -> None:
        """Each model built and warmed up on the longest and shortest shapes (for torch.compile the
        warm-up is its compilation)."""
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        warm = [self.ids[i] for i in order[-16:] + order[:16]]
        for name, (build, *_) in self.variants.items():
            start = time.perf_counter()
            self.models[name] = build()
            self.run(name, warm)
            self.warmup[name] = time.perf_counter() - start
            print(f"built and warmed up {name} in {self.warmup[name]:.0f} s", flush=True)

    def time_rounds(self) -> float:
        """Every variant in turn each round; the fp32 matmul limit at its best, before and after."""
        limit, _ = matmul_flops(torch.device("cpu"))
        for r in range(self.args.rounds):
            for name in self.variants:
                start = time.perf_counter()
                self.probs[name] = self.run(name, self.ids)
                self.seconds[name].append(time.perf_counter() - start)
            print(f"round {r + 1} of {self.args.rounds} done", flush=True)
        return max(limit, matmul_flops(torch.device("cpu"))[0])

    def rows(self, limit: float) -> list[dict]:
        ref, threshold = self.probs[next(iter(self.variants))], self.clf.threshold
        rows = []
        for name in self.variants:
            s = statistics.median(self.seconds[name])
            agree = decide(self.probs[name], threshold) == decide(ref, threshold)
            rows.append({"variant": name, "warmup_s": round(self.warmup[name], 1),
                         "seconds": [round(x, 2) for x in self.seconds[name]],
                         "reviews_per_s": round(len(self.ids) / s, 3), "mfu": round(self.useful / s / limit, 4),
                         "label_agreement": float(agree.mean()),
                         "max_prob_diff": float(np.abs(self.probs[name] - ref).max())})
        return rows


def print_table(rows: list[dict], ids, limit: float, rounds: int) -> None:
    base = rows[0]["reviews_per_s"]
    print(f"\n{len(ids)} reviews, {sum(map(len, ids))} tokens, fp32 matmul limit {limit / 1e9:.0f} GFLOP/s, "
          f"medians of {rounds} rounds\n")
    print("| variant | reviews/s | vs baseline | MFU | label agreement | max prob diff | warm-up s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['reviews_per_s']:.2f} | {row['reviews_per_s'] / base:.2f}x | "
              f"{100 * row['mfu']:.1f}% | {100 * row['label_agreement']:.1f}% | {row['max_prob_diff']:.1e} | "
              f"{row['warmup_s']:.0f} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    trials = Trials(args)
    trials.build_all()
    limit = trials.time_rounds()
    rows = trials.rows(limit)
    print_table(rows, trials.ids, limit, args.rounds)
    ids = trials.ids
    result = {"reviews": len(ids), "tokens": sum(map(len, ids)), "max_length": args.max_length, "rounds": args.rounds,
              "matmul_limit_gflops": round(limit / 1e9, 1), "threads": trials.threads,
              "machine": platform.processor() or platform.machine(), "cpu": this_cpu().to_dict(), "variants": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
