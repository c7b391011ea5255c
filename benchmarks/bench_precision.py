"""CPU precision, measured: every scoring precision against fp32 on one classifier and the same
reviews, and (with --train) the demo trained with and without bf16 autocast.

Scoring, in one process:
- speed: the variants alternate for --rounds rounds over the same --speed-n reviews (one warm-up
  batch each first); the median reviews/s is kept. fp32 and bf16 alternate first; int8 (and the
  ONNX exports) are loaded and timed after them, since a loaded torchao int8 model slowed bf16.
  Each round also records the share of the machine's CPU time the hypervisor gave to other
  guests (steal, from /proc/stat), so that a slow round on a busy host shows as such;
- accuracy: each variant scores --n test reviews (a seeded balanced sample) once: accuracy with
  its 95% Wilson interval, label agreement with fp32, and the fp32 margin from the threshold of
  every review whose label changed;
- the matmul limit of each precision (2048 x 2048 by 2048 x 576, as the scorer's shapes), measured
  in the same run, and each variant's peak RSS (a fresh process loading it and scoring 64 reviews);
- with --onnx, the run exported four ways (merged fp32 and bf16 weights, ONNX fp32 and int8), each
  folder's size, and the two ONNX exports scored as variants onnx-fp32 and onnx-int8.
- with --budgets, fp32's and bf16's speed at 1, 2 and 4 times the classifier's token budget
  per scoring batch (eval.max_batch_tokens), alternating over the same reviews: what
  precision.BUDGET_SCALE is chosen from.
Training (--train): `sentiment-lora train` on the demo preset twice, in subprocesses, with
train.mixed_precision=no and =bf16 (scoring fp32 in both, so only training differs); their
metrics.json give tokens/s and test accuracy.

    python benchmarks/bench_precision.py RUN_DIR --dataset ../shared/imdb [--train]

Only the precisions this processor has units for are scored and trained (fp32 always; the
matmul limits are measured for all three, to show what the missing units would cost). Results go
to benchmarks/results/precision-cpu.json on an AMX processor and precision-cpu-<kind>.json on the
other kinds, with the processor and its flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by file path
from common import cpu_times, stolen_share  # noqa: E402
from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.data import balanced_indices, label_mapper, load_splits, prepare_split
from sentiment_lora.decision import decide, decision_margin
from sentiment_lora.export import export
from sentiment_lora.metrics import wilson_interval
from sentiment_lora.precision import SCORING_DEFAULT, TRAINING_DEFAULT, scoring_budget, this_cpu

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "bf16", "int8")


def matmul_limit(precision: str, seconds: float = 2.0) -> float:
    """Best GFLOP/s (GOP/s for int8) of a 2048x2048 @ 2048x576 product in ``precision``."""
    m, k, n = 2048, 2048, 576
    if precision == "int8":
        a, b = torch.randint(-64, 64, (m, k), dtype=torch.int8), torch.randint(-64, 64, (k, n), dtype=torch.int8)
        op = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        op = lambda: a @ b  # noqa: E731
    op()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        op()
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def sample(clf: SentimentClassifier, dataset: str, n: int, seed: int = 0):
    data_cfg = clf.data_config(dataset)
    raw = load_splits(data_cfg, ["test"])["test"]
    rows = prepare_split(raw, "test", data_cfg, label_mapper(data_cfg, clf.label_words))
    return rows.take(balanced_indices(rows.labels, n, len(clf.label_words), np.random.default_rng(seed)))


def exports(run_dir: str, folder: Path) -> dict:
    """Each export of the run (torch fp32 and bf16 weights, ONNX fp32 and int8): its folder and size."""
    kinds = {"merged-fp32": {"merge": True}, "merged-bf16": {"merge": True, "dtype": "bfloat16"},
             "onnx-fp32": {"onnx": "fp32"}, "onnx-int8": {"onnx": "int8"}}
    out = {}
    for name, kw in kinds.items():
        t = time.perf_counter()
        path = export(run_dir, folder / name, **kw)
        out[name] = {"folder": path, "seconds": round(time.perf_counter() - t, 1),
                     "folder_mb": round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)}
    return out


def peak_memory(folder: str, precision: str | None, texts: list[str]) -> float:
    """Peak RSS (MB) of a fresh process that loads the classifier and scores ``texts``: its own
    high-water mark (VmHWM), since getrusage's ru_maxrss carries the parent's peak across exec."""
    code = ("import json, re, sys; from sentiment_lora.classifier import SentimentClassifier; "
            "clf = SentimentClassifier.load(sys.argv[1], device='cpu', precision=json.loads(sys.argv[2])); "
            "clf.predict_proba(json.loads(sys.argv[3])); "
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)")
    done = subprocess.run([sys.executable, "-c", code, folder, json.dumps(precision), json.dumps(texts)],
                          capture_output=True, text=True, check=True)
    return round(float(done.stdout.split()[-1]), 1)


def timed(models: dict, fast: list, ids: list, rounds: int) -> dict:
    """Per model: its reviews/s in ``rounds`` alternating rounds over ``fast``, then its
    probabilities of ``ids``, the seconds that full pass took, and the share of each round's CPU
    time stolen by the hypervisor."""
    speeds, stolen = {p: [] for p in models}, {p: [] for p in models}
    for clf in models.values():
        clf.proba_of_prompts(fast[:8])  # warm-up
    for _ in range(rounds):
        for p, clf in models.items():
            t, before = time.perf_counter(), cpu_times()
            clf.proba_of_prompts(fast)
            speeds[p].append(len(fast) / (time.perf_counter() - t))
            stolen[p].append(stolen_share(before, cpu_times()))
    out = {}
    for p, clf in models.items():
        t = time.perf_counter()
        probs = clf.proba_of_prompts(ids)
        out[p] = (speeds[p], probs, time.perf_counter() - t, stolen[p])
    return out


def scoring(run_dir: str, dataset: str, n: int, speed_n: int, rounds: int, variants: list[str],
            onnx: dict | None = None) -> dict:
    """fp32 and bf16 are timed first, and the quantized variants only after: once torchao's int8
    model was loaded, bf16 scoring in the same process ran slower (docs/performance.md)."""
    models = {p: SentimentClassifier.load(run_dir, device="cpu", precision=p) for p in variants if p != "int8"}
    test = sample(models["fp32"], dataset, n)
    ids = models["fp32"].encode(test.texts)
    runs = timed(models, ids[:speed_n], ids, rounds)
    later = {p: SentimentClassifier.load(run_dir, device="cpu", precision=p) for p in variants if p == "int8"}
    for name in ("onnx-fp32", "onnx-int8") if onnx else ():
        later[name] = SentimentClassifier.load(onnx[name]["folder"])
    runs.update(timed(later, ids[:speed_n], ids, rounds) if later else {})
    models.update(later)
    out, base = {}, None
    for p, (speeds, probs, seconds, stolen) in runs.items():
        clf = models[p]
        preds = decide(probs, clf.threshold)
        correct = int((preds == np.asarray(test.labels)).sum())
        row = {"reviews_per_s": round(statistics.median(speeds), 2), "speed_rounds": [round(s, 2) for s in speeds],
               "steal_rounds": stolen, "reviews_per_s_full_pass": round(n / seconds, 2), "accuracy": correct / n,
               "ci95": [round(x, 4) for x in wilson_interval(correct, n)], "n": n,
               "peak_rss_mb": peak_memory(str(onnx[p]["folder"]) if p.startswith("onnx") else run_dir,
                                          None if p.startswith("onnx") else p, test.texts[:64])}
        if base is None:
            base = (probs, preds, clf.threshold)
        else:
            changed = preds != base[1]
            row["agreement"] = float(1 - changed.mean())
            row["changed_fp32_margins"] = sorted(round(float(x), 4) for x in
                                                 decision_margin(base[0], base[2])[changed])
            row["max_prob_diff"] = round(float(np.abs(probs - base[0]).max()), 4)
        out[p] = row
    return out


def budgets(run_dir: str, dataset: str, speed_n: int, rounds: int, variants: list[str]) -> dict:
    """Median reviews/s of fp32 and bf16 at 1, 2 and 4 times the saved token budget."""
    models = {p: SentimentClassifier.load(run_dir, device="cpu", precision=p) for p in variants if p != "int8"}
    base = models["fp32"].spec.max_batch_tokens or 1024
    fast = models["fp32"].encode(sample(models["fp32"], dataset, speed_n).texts)
    speeds = {(p, k * base): [] for p in models for k in (1, 2, 4)}
    for clf in models.values():
        clf.proba_of_prompts(fast[:8])  # warm-up
    for _ in range(rounds):
        for (p, tokens), got in speeds.items():
            models[p].max_batch_tokens = tokens
            t = time.perf_counter()
            models[p].proba_of_prompts(fast)
            got.append(len(fast) / (time.perf_counter() - t))
    out: dict = {}
    for (p, tokens), got in speeds.items():
        out.setdefault(p, {})[str(tokens)] = {"reviews_per_s": round(statistics.median(got), 2),
                                              "speed_rounds": [round(s, 2) for s in got]}
    return out


def training(dataset: str, variants: list[str]) -> dict:
    out = {}
    for name, mp in (("fp32", "no"), ("bf16", "bf16")):
        if name not in variants:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            cmd = [sys.executable, "-m", "sentiment_lora.cli", "train", "--config",
                   str(ROOT / "configs/smollm2-cpu.yaml"), "--set", f"data.dataset={dataset}",
                   "--set", f"train.mixed_precision={mp}", "--set", "eval.precision=fp32", "--output-dir", str(run)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            m = json.loads((run / "metrics.json").read_text())
        out[name] = {"tokens_per_s": m["train"]["train_tokens_per_s"], "train_seconds": m["train"]["train_seconds"],
                     "accuracy": m["accuracy"], "ci95": m["accuracy_ci95"], "n": m["n"],
                     "peak_mem_mb": m["train"]["peak_mem_mb"], "mixed_precision": m["train"]["mixed_precision"]}
    return out


def measured_defaults(result: dict) -> dict:
    """The defaults this run's figures support, by the issue's bounds: the fastest scoring precision
    within 0.5 points of fp32's accuracy with at least 99% agreement; bf16 training where it
    reached 2.5x fp32's tokens/s with accuracy inside fp32's 95% interval. ONNX exports are not
    candidates: ``--precision auto`` chooses among the torch precisions of one folder."""
    fp32 = result["scoring"]["fp32"]
    held = [p for p in VARIANTS if p in result["scoring"]]
    held = [p for p in held if p == "fp32" or (abs(result["scoring"][p]["accuracy"] - fp32["accuracy"]) <= 0.005
                                                   and result["scoring"][p]["agreement"] >= 0.99)]
    out = {"scoring": max(held, key=lambda p: result["scoring"][p]["reviews_per_s"])}
    if "bf16" in result.get("training", {}):
        t32, t16 = result["training"]["fp32"], result["training"]["bf16"]
        ok = t16["tokens_per_s"] >= 2.5 * t32["tokens_per_s"] and t32["ci95"][0] <= t16["accuracy"] <= t32["ci95"][1]
        out["training"] = "bf16" if ok else "fp32"
    elif "training" in result:
        out["training"] = "fp32"
    return out


def default_out(kind: str) -> Path:
    """AMX keeps the file the issue named; each other kind of processor gets its own, so that a
    run on one kind never overwrites another's figures."""
    name = "precision-cpu.json" if kind == "amx" else f"precision-cpu-{kind}.json"
    return ROOT / "benchmarks/results" / name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a trained classifier (the demo run)")
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared/imdb"))
    ap.add_argument("--n", type=int, default=2000, help="test reviews for accuracy and agreement")
    ap.add_argument("--speed-n", type=int, default=200, help="reviews per speed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train", action="store_true", help="also train the demo with and without bf16 autocast")
    ap.add_argument("--budgets", action="store_true", help="also time each precision at 1, 2 and 4 times the "
                    "classifier's scoring token budget")
    ap.add_argument("--onnx", action="store_true", help="also export the run (torch and ONNX Runtime, fp32 and "
                    "int8) and score the ONNX exports")
    ap.add_argument("--out", help="results file (default: precision-cpu.json on AMX, precision-cpu-<kind>.json "
                    "on other processors)")
    args = ap.parse_args(argv)
    cpu = this_cpu()
    variants = [p for p in VARIANTS if cpu.has_units(p)]
    result = {"cpu": cpu.to_dict(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "command": "python benchmarks/bench_precision.py " + " ".join(argv or sys.argv[1:]),
              "shipped_default": {"training": TRAINING_DEFAULT[cpu.kind], "scoring": SCORING_DEFAULT[cpu.kind],
                                  "budget_scale": {p: scoring_budget(1, p, cpu) for p in variants}},
              "matmul_limit": {p: round(matmul_limit(p), 1) for p in VARIANTS},
              "not_measured": {p: f"this CPU has no {p} units" for p in VARIANTS if p not in variants}}
    with tempfile.TemporaryDirectory() as tmp:
        made = exports(args.run_dir, Path(tmp)) if args.onnx else None
        result["scoring"] = scoring(args.run_dir, args.dataset, args.n, args.speed_n, args.rounds, variants, made)
    if args.budgets:
        result["budgets"] = budgets(args.run_dir, args.dataset, args.speed_n, args.rounds, variants)
    if made:
        result["exports"] = {k: {f: v for f, v in e.items() if f != "folder"} for k, e in made.items()}
    out = Path(args.out or default_out(cpu.kind))
    if args.train:  # the scoring figures are kept even if training then fails
        out.write_text(json.dumps(result, indent=2) + "\n")
        result["training"] = training(args.dataset, variants)
    result["default"] = measured_defaults(result)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
