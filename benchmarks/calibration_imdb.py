"""Threshold vs temperature scaling on the demo's IMDB protocol (128 validation, 500 test reviews), with the
demo classifier (RUN, default runs/demo): accuracy, log-loss and ECE on test for each calibration.

    python benchmarks/calibration_imdb.py [RUN]

Writes benchmarks/results/calibration-imdb-cpu.json. Temperature won (same accuracy as none,
lowest log-loss and ECE) and is the default of eval.calibration since.
"""
import json
import sys

import numpy as np

from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.config import load_config
from sentiment_lora.data import prepare_data
from sentiment_lora.decision import apply_temperature, best_threshold, decide, fit_temperature, log_loss
from sentiment_lora.metrics import expected_calibration_error as ece
from sentiment_lora.storage import write_json

cfg = load_config("configs/smollm2-cpu.yaml", ["data.dataset=../shared/imdb"])
# The shipped demo classifier's own sample; its saved calibration is undone to compare from scratch.
data = prepare_data(cfg.data, cfg.prompt.label_words)
clf = SentimentClassifier.load(sys.argv[1] if len(sys.argv) > 1 else "runs/demo", device="cpu")
clf.temperature = 1.0
val, test = clf.predict_proba(data.val.texts), clf.predict_proba(data.test.texts)
yv, yt = np.array(data.val.labels), np.array(data.test.labels)
t = fit_temperature(val, yv)
out = {}
for name, T, thr in (("none", 1.0, 0.5), ("threshold", 1.0, best_threshold(val, yv)),
                     ("temperature", t, 0.5), ("both", t, best_threshold(apply_temperature(val, t), yv))):
    p = apply_temperature(test, T)
    out[name] = {"temperature": round(T, 4), "threshold": round(float(thr), 4),
                 "accuracy": float((decide(p, thr) == yt).mean()), "log_loss": round(log_loss(p, yt), 4),
                 "ece": round(ece(yt, p), 4)}
result = {"run": sys.argv[1] if len(sys.argv) > 1 else "runs/demo", "n_val": len(yv), "n_test": len(yt), **out}
write_json("benchmarks/results/calibration-imdb-cpu.json", result)
print(json.dumps(result, indent=1))
