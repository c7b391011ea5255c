"""SST-5 (five classes) on this machine: calibrated zero-shot, TF-IDF + LR, and the fine-tuned preset.

All three are scored on the test split of ../shared/sst5 (test sentences that also appear in
train are dropped, as every run does) and reported with accuracy, its 95% interval, macro-F1,
ECE and minutes. One after the other in this process, never side by side.

    python benchmarks/bench_sst5.py --dataset ../shared/sst5      # make bench-sst5

Writes benchmarks/results/sst5-cpu.json: {"n_test", "zero_shot", "tfidf", "fine_tuned"}.
DRAFT (issue 11): not yet run end to end.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def summary(m: dict, seconds: float) -> dict:
    return {"accuracy": m["accuracy"], "ci95": m["accuracy_ci95"], "macro_f1": m["macro_f1"], "ece": m["ece"],
            "mae_classes": m.get("mae_classes"), "n": m["n"], "minutes": round(seconds / 60, 2)}


def main() -> None:
    from sentiment_lora.baseline import run_tfidf, run_zero_shot
    from sentiment_lora.config import load_config
    from sentiment_lora.train import run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="../shared/sst5")
    ap.add_argument("--config", default=str(ROOT / "configs" / "smollm2-sst5.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sst5-cpu.json"))
    args = ap.parse_args()

    cfg = load_config(args.config, [f"data.dataset={args.dataset}"])
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        m = run_zero_shot(cfg, Path(tmp) / "zero-shot")
        results["zero_shot"] = {**summary(m, time.perf_counter() - started),
                                "accuracy_uncalibrated": m["accuracy_uncalibrated"]}
        print("zero-shot", results["zero_shot"], flush=True)

        started = time.perf_counter()
        m = run_tfidf(cfg.data, Path(tmp) / "tfidf", label_words=cfg.prompt.label_words)
        results["tfidf"] = summary(m, time.perf_counter() - started)
        print("tfidf", results["tfidf"], flush=True)

        started = time.perf_counter()
        m = run(cfg, Path(tmp) / "fine-tuned")
        results["fine_tuned"] = summary(m, time.perf_counter() - started)
        print("fine-tuned", results["fine_tuned"], flush=True)
    results["n_test"] = results["fine_tuned"]["n"]
    results["config"] = cfg.to_dict()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
