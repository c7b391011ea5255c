"""Why a protocol figure moved: one quality run's LLM scores, read two ways and in two precisions.

Reads ``llm_scores.json`` (the LLM's own probabilities on the run's validation and test samples,
keyed by text) of one or more copies of a ``bench_quality.py`` best_recipe run, each scored in its
own precision (``sentiment-lora stack COPY --precision fp32`` rescores a copy), and prints per copy:
- test accuracy at the label rule temperature scaling gives (p >= 0.5) and with a threshold fitted
  on the 200 validation reviews (``eval.calibration: threshold``), which the older figures used;
- against the first copy: label agreement on the test sample and the changed labels' margins.

    python benchmarks/quality_decomposition.py RUN_BF16 RUN_FP32 --dataset ../shared/imdb
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sentiment_lora.config import load_config
from sentiment_lora.data import prepare_data
from sentiment_lora.decision import best_threshold
from sentiment_lora.stack import text_key

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ["data.train_size=2000", "data.val_size=200", "data.test_size=2000", "data.seed=42"]


def read_scores(run: Path, texts: list[str]) -> np.ndarray:
    probs = json.loads((run / "llm_scores.json").read_text())["probs"]
    return np.array([probs[text_key(t)] for t in texts])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="copies of one best_recipe run, each scored in one precision")
    ap.add_argument("--dataset", default="stanfordnlp/imdb")
    args = ap.parse_args(argv)
    cfg = load_config(ROOT / "configs" / "smollm2-hybrid.yaml", [f"data.dataset={args.dataset}", *PROTOCOL])
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    y_val, y_test = np.asarray(data.val.labels), np.asarray(data.test.labels)
    first, out = None, {}
    for run in args.runs:
        val, test = read_scores(run, data.val.texts), read_scores(run, data.test.texts)
        cut = best_threshold(val, y_val)
        row = {"precision": json.loads((run / "llm_scores.json").read_text())["precision"],
               "test_accuracy_at_0.5": float(((test[:, 1] >= 0.5) == y_test).mean()),
               "validation_threshold": round(cut, 4),
               "test_accuracy_at_validation_threshold": float(((test[:, 1] >= cut) == y_test).mean())}
        if first is None:
            first = test
        else:
            changed = (first[:, 1] >= 0.5) != (test[:, 1] >= 0.5)
            row.update(agreement=float(1 - changed.mean()), changed=int(changed.sum()),
                       changed_margins=[round(float(m), 4) for m in np.abs(test[changed, 1] - 0.5)])
        out[str(run)] = row
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
