"""Choose SST-5 label words on the validation split (never test): SmolLM2-135M zero-shot, one
forward pass per sentence, every candidate set read from the same next-token distribution.

For each set of five single-token words: accuracy as is, and with per-class logit offsets
(decision.fit_bias) cross-fitted on two halves of validation, so no sentence is scored with
offsets fitted on itself.

With ``--finetune N``, each set is also fine-tuned by the preset on a stratified sample of N
training sentences (``--epochs`` passes), and its validation accuracy reported: a cheaper proxy
for the full run, since the words a model starts from matter most when labels are few.

With ``--multiword``, the dataset's own class names as phrases ("very negative" ... "very
positive") are scored zero-shot the other way: each class by the sum of its tokens'
log-probabilities after the prompt, teacher-forced, one sequence per (sentence, class), batched.
Its accuracy and seconds beside the single-token sets' are what the README's choice rests on.

    python benchmarks/sst5_label_words.py [--dataset ../shared/sst5] [--finetune 1000 [--epochs 1]] [--multiword]

Its printed lines from this project's CPU are kept in benchmarks/results/sst5-label-words.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from sentiment_lora.config import load_config
from sentiment_lora.data import prepare_data
from sentiment_lora.decision import apply_bias, decide, fit_bias, log_loss
from sentiment_lora.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PHRASES = ["very negative", "negative", "neutral", "positive", "very positive"]
CANDIDATES = [
    ["terrible", "bad", "neutral", "good", "great"],
    ["awful", "bad", "okay", "good", "excellent"],
    ["terrible", "poor", "average", "good", "excellent"],
    ["horrible", "negative", "neutral", "positive", "amazing"],
    ["worst", "bad", "mixed", "good", "best"],
    ["1", "2", "3", "4", "5"],
]


def main() -> None:
    import torch

    from sentiment_lora.model import load_base_model, load_tokenizer, pick_device, pick_dtype
    from sentiment_lora.prompt import Prompt
    from sentiment_lora.scoring import score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="../shared/sst5")
    ap.add_argument("--config", default=str(ROOT / "configs" / "smollm2-sst5.yaml"))
    ap.add_argument("--finetune", type=int, default=0, metavar="N")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--multiword", action="store_true")
    ap.add_argument("--words", type=int, nargs="*", help="indices into CANDIDATES to fine-tune (default all)")
    args = ap.parse_args()
    if args.finetune:
        return finetune(args)
    cfg = load_config(args.config, [f"data.dataset={args.dataset}"])
    torch.manual_seed(0)
    tok = load_tokenizer(cfg.model)
    ids, usable = {}, []
    for words in CANDIDATES:
        try:
            ids[tuple(words)] = Prompt(tok, dataclasses.replace(cfg.prompt, label_words=words)).label_token_ids
            usable.append(words)
        except UserError as exc:
            print(f"skipped {words}: {exc}")
    union = sorted({i for v in ids.values() for i in v})
    prompt = Prompt(tok, cfg.prompt)
    val = prepare_data(cfg.data, cfg.prompt.label_words).val
    y = np.asarray(val.labels)
    device = pick_device(cfg.model.device)
    model = load_base_model(cfg.model, device, pick_dtype(cfg.model.dtype, device), tok.pad_token_id)
    started = time.perf_counter()
    probs_union = score(model, prompt.encode(val.texts).input_ids, union, tok.pad_token_id, cfg.eval.batch_size,
                        max_tokens=cfg.eval.max_batch_tokens)
    seconds = time.perf_counter() - started
    rows = []
    for words in usable:
        cols = [union.index(i) for i in ids[tuple(words)]]
        p = probs_union[:, cols]
        p = p / p.sum(axis=1, keepdims=True)  # softmax over the subset = renormalised union softmax
        rows.append({"label_words": words, **judge(p, y)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"n_val": len(y), "scoring_seconds": round(seconds, 1),
                      "sentences_per_s": round(len(y) / seconds, 1),
                      "best": max(rows, key=lambda r: r["accuracy_calibrated"])["label_words"]}), flush=True)
    if args.multiword:
        started = time.perf_counter()
        p = phrase_probs(model, prompt, tok, val.texts, PHRASES, cfg.eval.batch_size, cfg.eval.max_batch_tokens)
        seconds = time.perf_counter() - started
        print(json.dumps({"label_phrases": PHRASES, **judge(p, y), "scoring_seconds": round(seconds, 1),
                          "sentences_per_s": round(len(y) / seconds, 1)}), flush=True)


def judge(p: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy as is, and with per-class offsets cross-fitted on two halves of validation."""
    halves = np.arange(len(y)) % 2
    cal = np.zeros_like(p)
    for h in (0, 1):
        cal[halves == h] = apply_bias(p[halves == h], fit_bias(p[halves != h], y[halves != h]))
    return {"accuracy": round(float((decide(p) == y).mean()), 4),
            "accuracy_calibrated": round(float((decide(cal) == y).mean()), 4),
            "log_loss_calibrated": round(log_loss(cal, y), 4)}


def phrase_probs(model, prompt, tok, texts, phrases, batch_size, max_tokens) -> np.ndarray:
    """softmax over classes of sum_t log p(phrase token t | prompt, earlier phrase tokens)."""
    import torch

    from sentiment_lora.model import collate
    from sentiment_lora.scoring import length_batches

    sep = "" if prompt.cfg.template.format(text="x")[-1].isspace() else " "
    cont = [tok(sep + p, add_special_tokens=False).input_ids for p in phrases]
    enc = prompt.encode(texts).input_ids
    seqs = [(i, k, ids + c) for i, ids in enumerate(enc) for k, c in enumerate(cont)]
    keep = max(map(len, cont)) + 1
    total = np.zeros((len(texts), len(phrases)))
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for idx in length_batches([len(s[2]) for s in seqs], batch_size, max_tokens):
            batch = collate([seqs[j][2] for j in idx], tok.pad_token_id, device)
            position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits = model(**batch, position_ids=position_ids, logits_to_keep=keep, use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1)  # (rows, keep, vocab): last `keep` positions
            for row, j in enumerate(idx):
                i, k, _ = seqs[j]
                c = cont[k]
                # token c[t] is predicted at position -(len(c) - t) - 1 of the kept window
                total[i, k] = sum(float(logp[row, keep - len(c) - 1 + t, tok_id]) for t, tok_id in enumerate(c))
    total -= total.max(axis=1, keepdims=True)
    p = np.exp(total)
    return p / p.sum(axis=1, keepdims=True)


def finetune(args) -> None:
    import tempfile

    from sentiment_lora.train import run

    for i, words in enumerate(CANDIDATES):
        if args.words and i not in args.words:
            continue
        cfg = load_config(args.config, [f"data.dataset={args.dataset}", "data.sampling=stratified",
                                        f"data.train_size={args.finetune}", "data.test_size=50",
                                        f"train.epochs={args.epochs}", f"prompt.label_words={json.dumps(words)}"])
        started = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                m = run(cfg, Path(tmp) / "run")
        except UserError as exc:
            print(f"skipped {words}: {exc}")
            continue
        val = m["calibration"]["validation"]
        print(json.dumps({"label_words": words, "train": args.finetune, "epochs": args.epochs,
                          "val_accuracy": round(val["accuracy"], 4), "val_log_loss": round(val["log_loss_after"], 4),
                          "minutes": round((time.perf_counter() - started) / 60, 2)}), flush=True)


if __name__ == "__main__":
    main()
