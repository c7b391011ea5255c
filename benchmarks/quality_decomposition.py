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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, also when loaded by file path
from common import quality_samples  # noqa: E402
from sentiment_lora.decision import best_threshold  # noqa: E402
from sentiment_lora.stack import text_key  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="copies of one best_recipe run, each scored in one precision")
    ap.add_argument("--dataset", default="stanfordnlp/imdb")
    args = ap.parse_args(argv)
    _, data = quality_samples(args.dataset)
    y_val, y_test = np.asarray(data.val.labels), np.asarray(data.test.labels)
    first, out = None, {}
    for run in args.runs:
        saved = json.loads((run / "llm_scores.json").read_text())
        val, test = (np.array([saved["probs"][text_key(t)] for t in s.texts]) for s in (data.val, data.test))
        cut = best_threshold(val, y_val)
        row = {"precision": saved["precision"],
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
