"""The real SmolLM2-135M on real IMDB reviews: fine-tuning must clearly beat zero-shot."""

import json

import numpy as np
import pytest
import torch

from conftest import SHARED, real_model_marks
from sentiment_lora.config import load_config
from sentiment_lora.data import prepare_data
from sentiment_lora.model import load_base_model, load_tokenizer
from sentiment_lora.prompt import Prompt
from sentiment_lora.scoring import score
from sentiment_lora.train import run

IMDB = SHARED / "imdb"
pytestmark = real_model_marks(IMDB)
N_TEST = 100
"""Test reviews: each is scored twice (zero-shot, then fine-tuned), so this is most of the test's
time; the gap it must show (0.10 on two classes) is wide enough for a sample of this size."""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """SmolLM2 zero-shot on N_TEST test reviews, then fine-tuned on 64: (data, zero-shot accuracy, metrics, run)."""
    cfg = load_config("configs/smollm2-cpu.yaml", [
        f"data.dataset={IMDB}", "data.train_size=64", "data.val_size=0", f"data.test_size={N_TEST}", "data.seed=1",
        "prompt.max_length=96", "train.epochs=2", "train.batch_size=8", "train.grad_accum=1",
        "train.lr=1e-3", "train.save_steps=0", "eval.calibrate=false", "eval.verify_samples=8"])

    tok = load_tokenizer(cfg.model)
    prompt = Prompt(tok, cfg.prompt)
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    base = load_base_model(cfg.model, torch.device("cpu"), torch.float32, tok.pad_token_id)
    probs = score(base, prompt.encode(data.test.texts).input_ids, prompt.label_token_ids, tok.pad_token_id, 16)
    zero_shot = float(((probs[:, 1] >= 0.5).astype(int) == np.asarray(data.test.labels)).mean())
    del base
    out = tmp_path_factory.mktemp("smollm2") / "run"
    return data, zero_shot, run(cfg, out), out


def test_fine_tuning_beats_zero_shot(real_run):
    _, zero_shot, metrics, _ = real_run
    print(f"SmolLM2-135M on {N_TEST} IMDB test reviews: zero-shot {zero_shot:.3f}, "
          f"fine-tuned on 64 reviews {metrics['accuracy']:.3f}")
    assert metrics["n"] == N_TEST
    assert metrics["accuracy"] >= zero_shot + 0.10
    assert metrics["accuracy"] >= 0.70


def test_real_export_matches_the_run(real_run, tmp_path):
    """The merged export of a real SmolLM2 classifier gives the run's probabilities (fp32)."""
    from sentiment_lora.classifier import SentimentClassifier
    from sentiment_lora.export import export

    data, _, _, run_dir = real_run
    texts = data.test.texts[:16]
    want = SentimentClassifier.load(run_dir, merge=False).predict_proba(texts)
    out = export(run_dir, tmp_path / "exported", merge=True)
    spec = json.loads((out / "classifier.json").read_text())
    assert spec["base_model"]["bundled"] and spec["adapter"] is None
    got = SentimentClassifier.load(out).predict_proba(texts)
    print(f"export parity on {len(texts)} reviews: max |diff| {np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() <= 1e-4
