"""SST-5 (five classes) on this machine: calibrated zero-shot, TF-IDF + LR, and the fine-tuned preset.

All three are scored on the test split of ../shared/sst5 (test sentences that also appear in
train are dropped, as every run does: 2 of 2,210) and reported with accuracy, its 95% Wilson
interval, macro-F1, ECE (top-label confidence, 10 bins), mean class error and minutes. They
run one after the other in this process, never side by side; each keeps its run folder
under runs/bench-sst5/ (report.html, confusion matrix, predictions).

    python benchmarks/bench_sst5.py --dataset ../shared/sst5      # make bench-sst5

Writes benchmarks/results/sst5-cpu.json: {"n_test", "zero_shot", "tfidf", "fine_tuned", ...}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import dataset_record, fresh_folder

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"zero_shot": "SmolLM2-135M zero-shot, per-class offsets calibrated on validation",
         "tfidf": "TF-IDF (1-2 grams) + logistic regression, all 8,544 training sentences",
         "fine_tuned": "SmolLM2-135M + LoRA, configs/smollm2-sst5.yaml (all training sentences, two epochs)"}


def summary(m: dict, seconds: float) -> dict:
    return {"accuracy": m["accuracy"], "ci95": m["accuracy_ci95"], "macro_f1": m["macro_f1"], "ece": m["ece"],
            "mae_classes": m.get("mae_classes"), "roc_auc": m.get("roc_auc"), "n": m["n"],
            "minutes": round(seconds / 60, 2)}


def markdown(r: dict) -> str:
    lines = [f"| method | accuracy on {r['n_test']:,} test sentences (95% CI) | macro-F1 | ECE | mean class error "
             "| minutes |", "|---|---|---|---|---|---|"]
    for key, label in NAMES.items():
        e = r[key]
        lines.append(f"| {label} | {e['accuracy']:.3f} ({e['ci95'][0]:.3f}-{e['ci95'][1]:.3f}) | {e['macro_f1']:.3f} "
                     f"| {e['ece']:.3f} | {e['mae_classes']:.3f} | {e['minutes']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    from sentiment_lora.baseline import run_tfidf, run_zero_shot
    from sentiment_lora.config import load_config
    from sentiment_lora.precision import this_cpu
    from sentiment_lora.storage import write_json
    from sentiment_lora.train import run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "sst5"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "smollm2-sst5.yaml"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-sst5"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sst5-cpu.json"))
    args = ap.parse_args()

    cfg = load_config(args.config, [f"data.dataset={args.dataset}"])
    work = Path(args.work)
    steps = {"zero_shot": lambda out: run_zero_shot(cfg, out),
             "tfidf": lambda out: run_tfidf(cfg.data, out, label_words=cfg.prompt.label_words),
             "fine_tuned": lambda out: run(cfg, out)}
    results: dict = {}
    started_all = time.perf_counter()
    for name, step in steps.items():
        out = fresh_folder(work, name, "bench_sst5.py")  # a fresh measurement each time
        started = time.perf_counter()
        m = step(out)
        results[name] = summary(m, time.perf_counter() - started)
        if name == "zero_shot":
            results[name]["accuracy_uncalibrated"] = m["accuracy_uncalibrated"]
        if name == "fine_tuned":
            results[name]["calibration"] = m["calibration"]
        print(name, results[name], file=sys.stderr, flush=True)
    results["n_test"] = results["fine_tuned"]["n"]
    results["total_minutes"] = round((time.perf_counter() - started_all) / 60, 2)
    results["dataset"] = dataset_record(args.dataset)
    results["cpu"] = this_cpu().to_dict()  # minutes mean little without the machine
    results["config"] = cfg.to_dict()
    results["config"]["data"]["dataset"] = results["dataset"]["name"]  # not this machine's path
    write_json(Path(args.out), results)
    print(markdown(results))


if __name__ == "__main__":
    main()
