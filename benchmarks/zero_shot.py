"""Zero-shot accuracy of a config's base model (no adapter) on that config's own test sample.

Scores the same balanced, seeded test sample that `sentiment-lora train` would, by the
same label-token method, with the threshold at 0.5 (uncalibrated) and calibrated on the
config's validation sample, so the numbers compare directly with a fine-tuned run's.

    python benchmarks/zero_shot.py --config configs/smollm2-cpu.yaml --set data.dataset=../shared/imdb
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sentiment_lora.config import load_config
from sentiment_lora.data import prepare_data
from sentiment_lora.evaluate import score
from sentiment_lora.metrics import best_threshold, compute_metrics, predict_labels
from sentiment_lora.model import load_base_model, load_tokenizer, pick_device, pick_dtype
from sentiment_lora.prompt import Prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)

    started = time.perf_counter()
    device = pick_device(cfg.model.device)
    tok = load_tokenizer(cfg.model)
    prompt = Prompt(tok, cfg.prompt)
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    model = load_base_model(cfg.model, device, pick_dtype(cfg.model.dtype, device), tok.pad_token_id)

    def probs_of(sample):
        return score(model, prompt.encode(sample.texts).input_ids, prompt.label_token_ids, tok.pad_token_id,
                     cfg.eval.batch_size, progress="score")

    test = probs_of(data.test)
    out = {"model": cfg.model.name_or_path, "n_test": len(data.test)}
    plain = compute_metrics(data.test.labels, predict_labels(test, 0.5), test, cfg.prompt.label_words)
    out["uncalibrated"] = {"threshold": 0.5, "accuracy": plain["accuracy"], "ci95": plain["accuracy_ci95"],
                           "roc_auc": plain["roc_auc"],
                           "predicted_positive_share": float(predict_labels(test, 0.5).mean())}
    if len(data.val):
        t = best_threshold(probs_of(data.val), data.val.labels)
        cal = compute_metrics(data.test.labels, predict_labels(test, t), test, cfg.prompt.label_words)
        out["calibrated"] = {"threshold": t, "n_val": len(data.val), "accuracy": cal["accuracy"],
                             "ci95": cal["accuracy_ci95"]}
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["mean_p_positive"] = float(np.mean(test[:, 1]))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
