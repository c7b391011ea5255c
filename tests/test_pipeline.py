"""End to end on the tiny model: train -> files -> evaluate -> predict -> reload."""

import json

import numpy as np
import pytest
import yaml

from sentiment_lora import SentimentClassifier, load_model_with_lora, predict_sentiment
from sentiment_lora.cli import main
from sentiment_lora.errors import UserError
from sentiment_lora.evaluate import evaluate_run
from sentiment_lora.train import run

RUN_FILES = ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "classifier.json", "config.yaml",
             "metrics.json", "predictions.jsonl", "train_log.jsonl", "training_curves.png", "confusion_matrix.png",
             "calibration.png"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    from sentiment_lora.config import load_config

    cfg = load_config(None, [
        f"model.name_or_path={tiny_model_dir}", "model.device=cpu", f"data.dataset={tiny_data_dir}",
        "data.train_size=48", "data.val_size=16", "data.test_size=24", "prompt.max_length=40",
        "train.epochs=2", "train.batch_size=4", "train.grad_accum=2", "train.lr=5e-3", "train.logging_steps=1",
        "train.save_steps=0", "eval.batch_size=8", "eval.calibrate=true", "eval.verify_samples=8"])
    out = tmp_path_factory.mktemp("run") / "run"
    metrics = run(cfg, out)
    return out, metrics, cfg


def test_run_writes_every_file(trained):
    out, metrics, cfg = trained
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    assert not [p for p in out.rglob("*.tmp")]
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg.to_dict()
    spec = json.loads((out / "classifier.json").read_text())
    assert spec["prompt"]["template"] == "Review: {text}\nSentiment:"
    assert spec["prompt"]["label_words"] == ["Negative", "Positive"]
    assert len(set(spec["prompt"]["label_token_ids"])) == 2
    assert 0 < spec["threshold"] < 1


def test_metrics_match_the_predictions_file(trained):
    out, metrics, _ = trained
    saved = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == saved["n"] == 24
    acc = np.mean([r["gold"] == r["pred"] for r in rows])
    assert saved["accuracy"] == pytest.approx(acc)
    cm = saved["confusion_matrix"]
    words = saved["labels"]
    for i, gold in enumerate(words):
        for j, pred in enumerate(words):
            assert cm[i][j] == sum(r["gold"] == gold and r["pred"] == pred for r in rows)
    assert sum(r["gold"] == "Positive" for r in rows) == 12  # balanced test sample
    assert saved["data"]["test_rows_in_train_dropped"] == 1 and saved["data"]["duplicates_in_train"] == 1
    assert saved["train"]["train_tokens_per_s"] > 0 and saved["train"]["peak_mem_mb"] > 0
    assert saved["reload_check"]["n"] == 8


def test_training_log_and_schedule(trained):
    out, _, cfg = trained
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 12  # 2 epochs x 12 batches / 2 accum
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    assert "val_accuracy" in log[-1]
    lrs = [r["lr"] for r in log if "lr" in r]
    assert max(lrs) <= cfg.train.lr and lrs[-1] < max(lrs)  # warm-up then cosine decay


def test_reload_predicts_the_same(trained):
    out, _, _ = trained
    clf = SentimentClassifier.load(out)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    from sentiment_lora.config import load_config
    from sentiment_lora.data import prepare_data

    cfg = load_config(out / "config.yaml")
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    probs = clf.predict_proba(data.test.texts)
    assert probs.shape == (24, 2) and np.allclose(probs.sum(axis=1), 1)
    assert clf.predict(data.test.texts) == [r["pred"] for r in rows]
    np.testing.assert_allclose(probs, [r["probs"] for r in rows], atol=1e-5)
    model, tok = load_model_with_lora(out)
    assert predict_sentiment(data.test.texts[0], model, tok) == rows[0]["pred"]


def test_evaluate_rescoring(trained, tmp_path, tiny_data_dir):
    out, metrics, _ = trained
    m = evaluate_run(out, split="test", limit=20, output_dir=tmp_path / "ev")
    assert m["n"] == 20 and (tmp_path / "ev" / "metrics.json").is_file()
    rows = (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 20
    g = evaluate_run(out, split="test", limit=10, method="generate", output_dir=tmp_path / "gen")
    assert g["method"] == "generate" and g["n"] == 10
    gen_rows = [json.loads(r) for r in (tmp_path / "gen" / "predictions.jsonl").read_text().splitlines()]
    assert g["unparsed"] == sum(r["pred"] is None for r in gen_rows)  # every unparsed answer, and only those


def test_cli_predict_and_evaluate(trained, tmp_path, capsys):
    out, _, _ = trained
    assert main(["predict", str(out), "Great superb film", "--json", "awful boring mess"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["label"] in ("Positive", "Negative") for x in lines] == [True, True]
    assert all(abs(sum(x["probs"].values()) - 1) < 1e-5 for x in lines)
    f = tmp_path / "reviews.csv"
    f.write_text("id,text\n1,great film\n2,dull plot\n")
    assert main(["predict", str(out), "--file", str(f)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["evaluate", str(out), "--limit", "10", "--output-dir", str(tmp_path / "e")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--limit", "10", "--dtype", "bfloat16",
                 "--output-dir", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["dtype"] == "bfloat16"


def test_training_reports_throughput_and_memory(trained):
    _, metrics, _ = trained
    t = metrics["train"]
    assert t["train_tokens_per_s"] > 0 and t["train_reviews_per_s"] > 0 and t["peak_mem_mb"] > 0
    assert metrics["eval_reviews_per_s"] > 0


def test_cli_predict_reads_stdin(trained, monkeypatch, capsys):
    import io

    out, _, _ = trained
    monkeypatch.setattr("sys.stdin", io.StringIO("great superb film\n\nawful boring mess\n"))
    assert main(["predict", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("Positive", "Negative") for line in lines)


def test_resume_continues_an_interrupted_run(tiny_config, tmp_path, interrupted_run):
    cfg = tiny_config("train.save_steps=2", "train.epochs=1", "eval.verify_samples=0")
    out = tmp_path / "run"
    interrupted_run(cfg, out)
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / "classifier.json").exists()
    with pytest.raises(UserError, match="holds an unfinished training run"):
        SentimentClassifier.load(out)
    with pytest.raises(UserError, match="holds an interrupted run with a checkpoint; continue it with"):
        run(cfg, out)
    metrics = run(cfg, out, resume=True)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 7))
    assert metrics["train"]["optimizer_steps"] == 6 and (out / "classifier.json").is_file()


def test_resume_from_another_folder_names_the_relative_dataset(tiny_config, tiny_data_dir, tmp_path,
                                                                 interrupted_run, monkeypatch):
    from sentiment_lora.checkpoint import run_config

    monkeypatch.chdir(tiny_data_dir.parent)
    cfg = tiny_config("train.save_steps=2", "train.epochs=1", "eval.verify_samples=0",
                      f"data.dataset=./{tiny_data_dir.name}")
    out = tmp_path / "run"
    interrupted_run(cfg, out)
    assert run_config(out).data.dataset == f"./{tiny_data_dir.name}"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="relative to the folder training started from.*--set data.dataset=PATH"):
        run_config(out)
    assert run_config(out, [f"data.dataset={tiny_data_dir}"]).data.dataset == str(tiny_data_dir)


def test_a_non_finite_step_is_skipped_and_divergence_stops(tiny_config, tmp_path, monkeypatch):
    import torch

    import sentiment_lora.train as train_mod

    real = train_mod.label_logits
    calls = {"n": 0}

    def one_bad_batch(*args, **kwargs):
        calls["n"] += 1
        logits = real(*args, **kwargs)
        return logits * float("nan") if calls["n"] == 3 else logits

    monkeypatch.setattr(train_mod, "label_logits", one_bad_batch)
    metrics = run(tiny_config("train.epochs=1", "eval.verify_samples=0"), tmp_path / "a")
    assert metrics["train"]["skipped_steps"] == 1
    clf = SentimentClassifier.load(tmp_path / "a")
    assert all(torch.isfinite(p).all() for p in clf.model.parameters())

    monkeypatch.setattr(train_mod, "label_logits", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(UserError, match="training diverged"):
        run(tiny_config("train.epochs=3", "train.grad_accum=1"), tmp_path / "b")


def test_training_is_followed_in_tensorboard(tiny_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny_config("train.epochs=1", "train.report_to=[tensorboard]", "eval.verify_samples=0",
                    "data.val_size=16"), tmp_path / "run")
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/val_accuracy", "test/accuracy"} <= tags, tags
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, len(acc.Scalars("train/loss")) + 1))


def test_three_labels_unbalanced_end_to_end(tiny_model_dir, tmp_path):
    """3 classes in proportions 1 : 2 : 3, the dataset's own validation split, stratified
    samples, ordinal metrics, a K-column reload check, and predict / evaluate on the result."""
    import random

    import pandas as pd

    from sentiment_lora.config import load_config

    rng = random.Random(3)
    vocab = {0: ["awful", "boring", "terrible", "dull"], 1: ["okay", "average", "fine", "mixed"],
             2: ["great", "wonderful", "superb", "moving"]}
    filler = ["the", "movie", "film", "plot", "acting", "was", "and", "a"]
    folder = tmp_path / "d"
    folder.mkdir()
    for split, n in (("train", 120), ("validation", 30), ("test", 60)):
        labels = [0] * (n // 6) + [1] * (n // 3) + [2] * (n // 2)
        rows = [(" ".join(rng.choice(vocab[y]) if rng.random() < 0.5 else rng.choice(filler) for _ in range(10)), y)
                for y in labels]
        pd.DataFrame(rows, columns=["text", "label"]).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", f"data.dataset={folder}", "model.device=cpu",
                             "data.sampling=stratified", "data.val_split=validation", "data.train_size=null",
                             "data.test_size=null", "data.ordinal=true",
                             "prompt.label_words=[Negative, Neutral, Positive]", "prompt.max_length=40",
                             "train.epochs=1", "train.batch_size=4", "train.grad_accum=2",
                             "train.lr=5e-3", "train.save_steps=0", "eval.batch_size=8", "eval.verify_samples=12",
                             "eval.calibrate=true"])
    metrics = run(cfg, tmp_path / "run")
    cal = metrics["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] != 1.0
    assert cal["validation"]["log_loss_after"] <= cal["validation"]["log_loss_before"] + 1e-9
    assert metrics["n"] == 60 and np.asarray(metrics["confusion_matrix"]).shape == (3, 3)
    assert [metrics["per_class"][w]["support"] for w in ("Negative", "Neutral", "Positive")] == [10, 20, 30]
    assert metrics["data"]["val_sample"] == 30 and metrics["data"]["val_from"] == "validation"
    assert metrics["mae_classes"] is not None and metrics["reload_check"]["n"] == 12
    clf = SentimentClassifier.load(tmp_path / "run")
    assert clf.temperature == pytest.approx(cal["temperature"])
    probs = clf.predict_proba(["great superb film", "okay average", "awful mess"])
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert set(clf.predict(["great superb film"])) <= {"Negative", "Neutral", "Positive"}
    again = evaluate_run(tmp_path / "run", split="test", output_dir=tmp_path / "ev")
    assert again["n"] == 60 and again["accuracy"] == pytest.approx(metrics["accuracy"]) and "mae_classes" in again


def test_binary_calibration_both_fits_temperature_then_threshold(tiny_config, tmp_path):
    metrics = run(tiny_config("eval.calibrate=true", "eval.calibration=both", "eval.verify_samples=8"), tmp_path / "r")
    cal = metrics["calibration"]
    assert cal["method"] == "both" and cal["threshold"] == metrics["threshold"]
    assert set(cal["test"]) == {"n", "log_loss_before", "log_loss_after", "ece_before", "ece_after"}
    spec = json.loads((tmp_path / "r" / "classifier.json").read_text())
    assert spec["temperature"] == pytest.approx(cal["temperature"])
