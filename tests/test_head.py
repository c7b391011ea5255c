"""The label-head variant (``lora.head``): the label words' rows of the LM head trained with
the adapter, saved beside it, and the same scores after every way of reloading."""

import json

import numpy as np
import pytest
import torch

from conftest import run_card_snippet
from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.errors import UserError
from sentiment_lora.export import export
from sentiment_lora.layout import HEAD_FILE
from sentiment_lora.model import label_head, load_label_head
from sentiment_lora.spec import FORMAT, ClassifierSpec
from sentiment_lora.train import run

TEXTS = ["Great superb film, loved it", "awful boring mess", "The plot was dull and the acting terrible.",
         "a moving and delightful story", "it was the movie"]


@pytest.fixture(scope="module")
def head_run(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    from conftest import TINY_RUN
    from sentiment_lora.config import load_config

    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", f"data.dataset={tiny_data_dir}", *TINY_RUN,
                             "lora.head=true"])
    out = tmp_path_factory.mktemp("head-run") / "run"
    metrics = run(cfg, out)
    return out, metrics


def _saved_probs(run_dir, n):
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return rows[:n]


def test_head_is_trained_saved_and_reloads_to_the_same_scores(head_run, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out, metrics = head_run
    spec = ClassifierSpec.load(out)
    assert spec.head == f"adapter/{HEAD_FILE}" and spec.head in spec.files
    saved = json.loads((out / "classifier.json").read_text())
    assert saved["format"] == FORMAT and saved["sections"] == ["head"]
    saved = load_file(out / spec.head)
    assert saved["token_ids"].tolist() == spec.label_token_ids
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    initial = base.get_output_embeddings().weight.detach()[spec.label_token_ids]
    assert saved["weight"].shape == initial.shape
    assert not torch.allclose(saved["weight"], initial), "the head's rows were not trained"
    # train() itself reloads the folder and re-scores test reviews (the reload check).
    assert metrics["reload_check"]["max_prob_diff"] <= 1e-5

    merged = SentimentClassifier.load(out)
    separate = SentimentClassifier.load(out, merge=False)
    assert label_head(merged.model) is not None and label_head(separate.model) is not None
    a, b = merged.predict_proba(TEXTS), separate.predict_proba(TEXTS)
    assert np.abs(a - b).max() <= 1e-5
    # The head changes the scores: the same adapter over the base's own LM head scores differently.
    no_head = SentimentClassifier.load(out)
    no_head.model.set_output_embeddings(label_head(no_head.model).lm_head)
    assert np.abs(no_head.predict_proba(TEXTS) - a).max() > 1e-4


def test_save_pretrained_keeps_the_head(head_run, tmp_path):
    out, _ = head_run
    clf = SentimentClassifier.load(out, merge=False)
    want = clf.predict_proba(TEXTS)
    clf.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "adapter" / HEAD_FILE).is_file()
    again = SentimentClassifier.load(tmp_path / "copy").predict_proba(TEXTS)
    assert np.abs(again - want).max() <= 1e-5


def test_exports_carry_the_head(head_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = head_run
    want = SentimentClassifier.load(out).predict_proba(TEXTS)
    merged = export(out, tmp_path / "merged", merge=True)
    unmerged = export(out, tmp_path / "unmerged", merge=False)
    assert ClassifierSpec.load(merged).head is None  # written into the saved LM head
    assert ClassifierSpec.load(unmerged).head == f"adapter/{HEAD_FILE}"
    for folder in (merged, unmerged):
        assert np.abs(SentimentClassifier.load(folder).predict_proba(TEXTS) - want).max() <= 1e-5
    assert "label head" in (merged / "README.md").read_text()
    for folder in (merged, unmerged):  # each card's own snippet (peft and the head's rows for the adapter)
        assert np.abs(run_card_snippet(folder, TEXTS[0])["probs"].numpy() - want[0]).max() <= 1e-4, folder.name

    # Plain transformers reads the head from the merged folder; the input embeddings are untouched.
    spec = ClassifierSpec.load(merged)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    tok = AutoTokenizer.from_pretrained(merged)
    clf = SentimentClassifier.load(merged)
    ids = clf.encode(TEXTS[:1])[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    probs = torch.softmax(logits[spec.label_token_ids] / spec.temperature, dim=-1).numpy()
    assert np.abs(probs - want[0]).max() <= 1e-4
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.data_ptr() != head.data_ptr()
    assert not torch.allclose(emb[spec.label_token_ids], head[spec.label_token_ids])
    assert tok.get_vocab() == clf.tokenizer.get_vocab()  # the folder's own tokenizer, whole


def test_a_spec_that_would_hide_its_head_is_refused(head_run):
    out, _ = head_run
    d = json.loads((out / "classifier.json").read_text())
    d.pop("checksum")
    for fmt in ("sentiment-lora-classifier/2", "sentiment-lora-classifier/3"):  # readers that know no head
        with pytest.raises(UserError, match="field 'head' needs format"):
            ClassifierSpec.from_dict({**d, "format": fmt})
    with pytest.raises(UserError, match="inside the adapter folder"):
        ClassifierSpec.from_dict({**d, "head": "elsewhere/label_head.safetensors"})


def test_a_head_that_does_not_fit_is_refused(head_run, tmp_path):
    from safetensors.torch import save_file

    out, _ = head_run
    clf = SentimentClassifier.load(out)
    spec = clf.spec
    wrong = tmp_path / HEAD_FILE
    save_file({"weight": torch.zeros(len(spec.label_token_ids), 3), "token_ids": torch.tensor(spec.label_token_ids)},
              str(wrong))
    fresh = SentimentClassifier.load(out)
    fresh.model.set_output_embeddings(label_head(fresh.model).lm_head)
    with pytest.raises(UserError, match="does not fit"):
        load_label_head(fresh.model, wrong, spec.label_token_ids)
    (tmp_path / "torn.safetensors").write_bytes((out / spec.head).read_bytes()[:50])
    with pytest.raises(UserError, match="cannot be read"):
        load_label_head(fresh.model, tmp_path / "torn.safetensors", spec.label_token_ids)


def test_resume_restores_the_head(tiny_config, tmp_path, interrupted_run):
    cfg = tiny_config("lora.head=true", "train.save_steps=2", "train.epochs=1", "eval.verify_samples=0",
                      "lora.dropout=0")
    whole = tmp_path / "whole"
    run(cfg, whole)
    out = tmp_path / "run"
    interrupted_run(cfg, out)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["head"].shape[0] == 2
    run(cfg, out, resume=True)
    from safetensors.torch import load_file

    a, b = load_file(whole / "adapter" / HEAD_FILE)["weight"], load_file(out / "adapter" / HEAD_FILE)["weight"]
    # Same seed, same data order, the head's rows and AdamW state restored: float noise only.
    assert torch.allclose(a, b, atol=1e-6), float((a - b).abs().max())
