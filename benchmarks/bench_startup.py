"""Start-up time of `sentiment-lora predict RUN_DIR "text"`: cold cache against warm cache.

Runs the real command in fresh processes, alternating cold (an empty SENTIMENT_LORA_CACHE:
the GGUF base model is hashed, dequantized and cached) and warm (the cache already filled),
and reports medians. It also times `python -c "import sentiment_lora"` and splits one warm
start into its phases, each timed inside a fresh process the way the CLI runs them.

    python benchmarks/bench_startup.py runs/demo --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sentiment_lora.precision import this_cpu

BIN = Path(sys.executable).parent
TEXT = "A wonderful, moving film."

PHASES = r"""
import sys, time, json
t = [time.perf_counter()]
import torch, transformers, peft  # noqa: E401  the heavy imports the CLI needs
import sentiment_lora.cli, sentiment_lora.classifier, sentiment_lora.model  # noqa: E401
t.append(time.perf_counter())
from pathlib import Path
from transformers.utils import logging as hf_logging
hf_logging.disable_progress_bar()
from sentiment_lora.classifier import SentimentClassifier, base_model_config, check_base_model
from sentiment_lora.model import load_adapter, load_base_model, load_tokenizer, pick_device, pick_dtype
from sentiment_lora.prompt import Prompt
from sentiment_lora.spec import ClassifierSpec
run = Path(sys.argv[1])
spec = ClassifierSpec.load(run)
cfg = base_model_config(spec, run)
check_base_model(spec, cfg)
t.append(time.perf_counter())
tok = load_tokenizer(cfg)
prompt = Prompt(tok, spec.prompt)
t.append(time.perf_counter())
device = pick_device("auto")
model = load_base_model(cfg, device, pick_dtype("auto", device), tok.pad_token_id)
t.append(time.perf_counter())
model = load_adapter(model, run / spec.adapter).eval()
t.append(time.perf_counter())
clf = SentimentClassifier(model, tok, prompt, threshold=spec.threshold, spec=spec)
clf.predict([sys.argv[2]])
t.append(time.perf_counter())
names = ["imports", "spec + base model check", "tokenizer", "base model (from cache)", "LoRA adapter", "scoring 1 text"]
print(json.dumps(dict(zip(names, [b - a for a, b in zip(t, t[1:])]))))
"""


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/startup-cpu.json")
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    warm_cache = root / "warm"
    env = {k: v for k, v in os.environ.items() if k != "SENTIMENT_LORA_VERBOSE"}
    predict = [str(BIN / "sentiment-lora"), "predict", args.run_dir, TEXT]
    timed(predict, {**env, "SENTIMENT_LORA_CACHE": str(warm_cache)})  # fills the warm cache
    cold, warm = [], []
    try:
        for i in range(args.runs):
            cold_cache = root / f"cold-{i}"
            cold.append(timed(predict, {**env, "SENTIMENT_LORA_CACHE": str(cold_cache)}))
            shutil.rmtree(cold_cache)
            warm.append(timed(predict, {**env, "SENTIMENT_LORA_CACHE": str(warm_cache)}))
            print(f"run {i + 1}: cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s", flush=True)
        bare = [timed([sys.executable, "-c", "pass"], env) for _ in range(args.runs)]
        imports = [timed([sys.executable, "-c", "import sentiment_lora"], env) for _ in range(args.runs)]
        splits = []
        for _ in range(args.runs):
            r = subprocess.run([sys.executable, "-c", PHASES, args.run_dir, TEXT], capture_output=True, text=True,
                               env={**env, "SENTIMENT_LORA_CACHE": str(warm_cache)})
            if r.returncode != 0:
                sys.exit(r.stderr[-2000:])
            splits.append(json.loads(r.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = statistics.median
    split = {k: round(med(s[k] for s in splits), 3) for k in splits[0]}
    result = {
        "command": f"sentiment-lora predict {args.run_dir} {TEXT!r}",
        "runs": args.runs,
        "cold_s": [round(x, 3) for x in cold], "warm_s": [round(x, 3) for x in warm],
        "cold_median_s": round(med(cold), 3), "warm_median_s": round(med(warm), 3),
        "warm_over_cold": round(med(warm) / med(cold), 3),
        "python_startup_median_s": round(med(bare), 3),
        "import_sentiment_lora_median_s": round(med(imports), 3),
        "warm_split_median_s": {"python start-up": round(med(bare), 3), **split,
                                 # what the split does not cover: merging LoRA, printing, interpreter exit
                                 "rest (by difference)": round(med(warm) - med(bare) - sum(split.values()), 3)},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cpu": this_cpu().to_dict(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\ncold cache: median {result['cold_median_s']:.2f} s; warm cache: median {result['warm_median_s']:.2f} s "
          f"({100 * result['warm_over_cold']:.0f}% of cold); import sentiment_lora: "
          f"{result['import_sentiment_lora_median_s']:.3f} s")
    print("warm start, median of each phase:")
    for k, v in result["warm_split_median_s"].items():
        print(f"  {k:28s} {v:6.3f} s")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
