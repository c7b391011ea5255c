"""ONNX exports: the merged classifier as an ONNX Runtime graph, fp32 and int8, loads and predicts."""

import json
import re

import numpy as np
import pytest

from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.cli import main
from sentiment_lora.errors import UserError
from sentiment_lora.export import export
from sentiment_lora.spec import ClassifierSpec

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TEXTS = ["Great superb film, loved it", "awful boring mess", "The plot was dull and the acting terrible.",
         "a moving and delightful story", "it was the movie"]
INT8_BOUND = 0.05
"""Largest change of a probability that int8 weights and activations may make on the tiny model."""


@pytest.fixture(scope="module")
def run_probs(tiny_run):
    return SentimentClassifier.load(tiny_run).predict_proba(TEXTS)


@pytest.fixture(scope="module")
def onnx_fp32(tiny_run, tmp_path_factory):
    return export(tiny_run, tmp_path_factory.mktemp("onnx") / "fp32", onnx="fp32")


@pytest.fixture(scope="module")
def onnx_int8(tiny_run, tmp_path_factory):
    return export(tiny_run, tmp_path_factory.mktemp("onnx") / "int8", onnx="int8")


def test_fp32_graph_gives_the_runs_probabilities(onnx_fp32, run_probs):
    spec = ClassifierSpec.load(onnx_fp32)
    assert (spec.onnx, spec.precision, spec.adapter) == ("model.onnx", "fp32", None)
    assert "model.onnx" in spec.files and not list(onnx_fp32.glob("*.safetensors"))
    clf = SentimentClassifier.load(onnx_fp32)
    assert clf.weights_dtype == "onnx-fp32"
    assert np.abs(clf.predict_proba(TEXTS) - run_probs).max() <= 1e-4


def test_int8_graph_is_smaller_and_close(onnx_fp32, onnx_int8, run_probs):
    assert ClassifierSpec.load(onnx_int8).precision == "int8"
    # smaller, though not 4x: the tiny model's embeddings, which stay fp32, are most of its weights
    assert (onnx_int8 / "model.onnx").stat().st_size < (onnx_fp32 / "model.onnx").stat().st_size
    probs = SentimentClassifier.load(onnx_int8).predict_proba(TEXTS)
    assert np.abs(probs - run_probs).max() <= INT8_BOUND


def test_cli_predicts_and_evaluates_from_an_onnx_folder(onnx_int8, tiny_data_dir, tmp_path, capsys):
    assert main(["predict", str(onnx_int8), TEXTS[0], TEXTS[1], "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows] == SentimentClassifier.load(onnx_int8).predict(TEXTS[:2])
    out = tmp_path / "eval"
    assert main(["evaluate", str(onnx_int8), "--dataset", str(tiny_data_dir), "--limit", "8",
                 "--output-dir", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["dtype"] == "onnx-int8"


def test_card_snippet_runs_with_onnx_runtime_alone(onnx_int8):
    card = (onnx_int8 / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", card, flags=re.S)[-1].replace("path/to/this/folder", str(onnx_int8))
    assert "import torch" not in code
    scope: dict = {}
    exec(code.replace("A wonderful, moving film.", TEXTS[0]), scope)  # as a user would copy it
    clf = SentimentClassifier.load(onnx_int8)
    assert np.abs(scope["probs"] - clf.predict_proba(TEXTS[:1])[0]).max() <= 1e-5
    assert scope["label"] == clf.predict(TEXTS[:1])[0]


def test_refusals(tiny_run, onnx_int8, tmp_path, capsys):
    assert main(["predict", str(onnx_int8), "x", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ONNX export in int8" in err and len(err.splitlines()) == 1
    assert main(["export", str(tiny_run), str(tmp_path / "x"), "--onnx", "int8", "--dtype", "bfloat16"]) == 2
    assert "--onnx" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as stop:
        main(["export", str(tiny_run), str(tmp_path / "y"), "--onnx", "int4"])
    assert stop.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err
    clf = SentimentClassifier.load(onnx_int8)
    for refused in (clf.compile, lambda: clf.save_pretrained(tmp_path / "z"),
                    lambda: export(onnx_int8, tmp_path / "w", merge=True)):
        with pytest.raises(UserError, match="ONNX export"):
            refused()


def test_spec_round_trip_and_checks(onnx_int8):
    d = ClassifierSpec.load(onnx_int8).to_dict()
    assert d["sections"] == ["onnx"] and ClassifierSpec.from_dict(d).onnx == "model.onnx"
    for change, message in (({"precision": "bf16"}, "fp32 or int8"), ({"onnx": "../model.onnx"}, "merged export"),
                            ({"sections": []}, "not named in 'sections'")):
        bad = {k: v for k, v in {**d, **change}.items() if k != "checksum"}
        with pytest.raises(UserError, match=re.escape(message)):
            ClassifierSpec.from_dict(bad)
