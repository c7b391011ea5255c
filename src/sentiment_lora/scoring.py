"""Scoring prompts with a model: label-token probabilities in length-sorted batches.

The classifier's one inference forward pass; it imports only the model helpers below it.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from tqdm.auto import tqdm

from .model import collate, label_logits
from .onnx_graph import OnnxScorer


def length_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices cut into batches of at most ``batch_size`` texts, longest first: little padding, and
    a memory problem shows on the first batch, not the last. With ``max_tokens``, a batch also closes
    before its padded size (rows x longest) would pass it, so short texts go in larger batches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if max_tokens is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for i in order:
        b = batches[-1] if batches else None
        if b and len(b) < batch_size and (len(b) + 1) * lengths[b[0]] <= max_tokens:
            b.append(i)
        else:
            batches.append([i])
    return batches


@torch.inference_mode()
def score(model, input_ids: list[list[int]], label_ids: list[int], pad_id: int, batch_size: int,
          progress: str | None = None, max_tokens: int | None = None) -> np.ndarray:
    """Probabilities over the label words, shape (n, labels): one forward pass per batch.
    ``model`` is a torch model or an ``onnx_graph.OnnxScorer`` (same batches, same softmax)."""
    onnx = isinstance(model, OnnxScorer)
    device = torch.device("cpu") if onnx else next(model.parameters()).device
    was_training = not onnx and model.training
    if not onnx:
        model.eval()
    labels = torch.tensor(label_ids, device=device)
    probs = np.zeros((len(input_ids), len(label_ids)), dtype=np.float64)
    batches = length_batches([len(x) for x in input_ids], batch_size, max_tokens)
    for idx in tqdm(batches, desc=progress, disable=progress is None, unit="batch", leave=False):
        batch = collate([input_ids[i] for i in idx], pad_id, device)
        if onnx:
            logits = torch.from_numpy(model.label_logits(batch["input_ids"].numpy(), batch["attention_mask"].numpy()))
        else:
            logits = label_logits(model, batch["input_ids"], batch["attention_mask"], labels)
        probs[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    if not onnx:
        model.train(was_training)
    return probs


@torch.inference_mode()
def score_generate(model, tokenizer, input_ids: list[list[int]], label_words: list[str], pad_id: int,
                   batch_size: int, max_new_tokens: int, progress: str | None = None) -> tuple[np.ndarray, int]:
    """The seed's fallback: generate a few tokens and look for a label word in them. One-hot rows,
    NaN rows (counted) for answers naming no label: ``decision.decide`` leaves those undecided."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs = np.full((len(input_ids), len(label_words)), np.nan)
    patterns = [re.compile(rf"\b{re.escape(w.lower())}\b") for w in label_words]
    for idx in tqdm(length_batches([len(x) for x in input_ids], batch_size), desc=progress,
                    disable=progress is None, unit="batch", leave=False):
        batch = collate([input_ids[i] for i in idx], pad_id, device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        for i, text in zip(idx, texts):
            hits = [(m.start(), c) for c, pat in enumerate(patterns) if (m := pat.search(text.lower()))]
            if hits:
                probs[i] = 0.0
                probs[i, min(hits)[1]] = 1.0
    model.train(was_training)
    return probs, int(np.isnan(probs).any(axis=1).sum())
