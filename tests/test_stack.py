"""``sentiment-lora stack``: the combiner sees validation rows only, the stack survives a save
and load, nothing in the folder is a pickle, and every way of classifying applies it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import sentiment_lora.stack as stack_mod
from conftest import write_split_files
from sentiment_lora.baseline import fit_tfidf
from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.cli import main
from sentiment_lora.config import load_config
from sentiment_lora.data import prepare_data
from sentiment_lora.decision import stack_features, stack_proba
from sentiment_lora.errors import UserError
from sentiment_lora.spec import ClassifierSpec

TEXTS = ["a great and moving film", "boring awful mess, a waste", "the plot was superb and the cast brilliant"]


class Untrusted:
    """Any type outside skops's defaults and sentiment-lora's list."""

    def __init__(self):
        self.weights = [1.0, 2.0]


@pytest.fixture(scope="module")
def stacked(tiny_run, tmp_path_factory):
    """A copy of the tiny run, stacked with TF-IDF, and what the combiner was fitted on."""
    import sentiment_lora.stack as stack_mod

    out = tmp_path_factory.mktemp("stacked") / "run"
    shutil.copytree(tiny_run, out)
    seen = {}
    real = stack_mod.fit_combiner

    def spy(features, labels, classes, seed=42):
        seen["features"], seen["labels"] = np.array(features), list(labels)
        return real(features, labels, classes, seed)

    stack_mod.fit_combiner = spy
    try:
        section = stack_mod.stack(out, "tfidf", device="cpu")
    finally:
        stack_mod.fit_combiner = real
    return out, section, seen


def test_the_combiner_is_fitted_on_validation_rows_only(stacked):
    out, section, seen = stacked
    cfg = load_config(out / "config.yaml")
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    clf = SentimentClassifier.load(out, device="cpu")
    # The features of exactly the validation rows, in order: a test row mixed in changes both.
    llm = clf.proba_of_prompts(clf.encode(data.val.texts))
    base = clf.stack_model.predict_proba(data.val.texts)
    assert seen["labels"] == data.val.labels
    np.testing.assert_allclose(seen["features"], stack_features(llm, base), atol=1e-5)
    assert not set(data.test.texts) & set(data.val.texts)
    assert section["val_n"] == len(data.val) and section["test"]["stack"]["n"] == len(data.test)


def test_a_stack_round_trips_and_every_path_applies_it(stacked, tmp_path):
    out, section, _ = stacked
    spec = ClassifierSpec.load(out)
    assert spec.stack is not None and spec.stack.baseline == "tfidf" and spec.threshold == 0.5
    assert spec.stack.model_file in spec.files
    clf = SentimentClassifier.load(out, device="cpu")
    got = clf.predict_proba(TEXTS)
    llm = clf.proba_of_prompts(clf.encode(TEXTS))
    want = stack_proba(stack_features(llm, clf.stack_model.predict_proba(TEXTS)), spec.stack.coef,
                       spec.stack.intercept)
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert not np.allclose(got, llm, atol=1e-4)  # the stack changes the answer, it is not a pass-through
    # The metrics sit beside each part, on the same test rows.
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"stack", "llm", "baseline"} <= set(metrics["stack"]["test"])
    assert len({m["n"] for m in metrics["stack"]["test"].values()}) == 1
    assert "Stacked with tfidf" in (out / "report.html").read_text()  # the page says what decides
    assert "the stack's combiner, which decides" in (out / "report.html").read_text()  # and what T applies to
    # predict from the command line gives the stacked probabilities too.
    rc = main(["predict", str(out), "--json", "--device", "cpu", *TEXTS])
    assert rc == 0
    # An export carries the stack along.
    exported = tmp_path / "export"
    assert main(["export", str(out), str(exported)]) == 0
    again = SentimentClassifier.load(exported, device="cpu")
    np.testing.assert_allclose(again.predict_proba(TEXTS), got, atol=1e-6)
    assert "the stack's combiner, which decides" in (exported / "README.md").read_text()
    # ... merged too: a stacked spec with no adapter left.
    assert main(["export", str(out), str(tmp_path / "merged"), "--merge"]) == 0
    merged = SentimentClassifier.load(tmp_path / "merged", device="cpu")
    assert merged.spec.adapter is None and merged.spec.stack is not None
    np.testing.assert_allclose(merged.predict_proba(TEXTS), got, atol=1e-5)


def test_a_stack_with_character_n_grams_reads_them_and_survives_a_load(stacked, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stacked[0], out)
    section = stack_mod.stack(out, "tfidf-nb-chars", device="cpu")
    clf = SentimentClassifier.load(out, device="cpu")  # skops builds the feature union, no pickle
    assert section["baseline"] == clf.spec.stack.baseline == "tfidf-nb-chars"
    names = clf.stack_model.named_steps["tfidf"].get_feature_names_out()
    assert {n.split("__")[0] for n in names} == {"words", "chars"}
    assert "chars__ gre" in names and "words__great" in names  # char_wb pads each word with a space
    # A word the training texts never held still reaches the model through its characters.
    train = prepare_data(load_config(out / "config.yaml").data, clf.spec.label_words).train
    words_only = fit_tfidf(train, nb=True)[0]
    unseen = ["greatest", "greattt"]
    assert not words_only[:-1].transform(unseen).nnz and clf.stack_model[:-1].transform(unseen).nnz
    np.testing.assert_allclose(SentimentClassifier.load(out, device="cpu").predict_proba(TEXTS),
                               clf.predict_proba(TEXTS), atol=1e-9)


def test_nothing_in_a_stacked_folder_is_a_pickle(stacked):
    out, _, _ = stacked
    for path in out.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            # Pickle protocols 2-5 start with PROTO (0x80) and the protocol number.
            assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), path
            assert path.suffix not in (".pkl", ".pickle", ".joblib"), path
    assert any(p.suffix == ".skops" for p in (out / "stack").iterdir())


def test_the_stacked_server_answers_with_the_stack(stacked):
    from test_serve import live, post

    out, _, _ = stacked
    want = SentimentClassifier.load(out, device="cpu").predict_proba(TEXTS)
    with live(out, max_wait_ms=5) as s:
        rows = post(s.url + "/classify", {"inputs": TEXTS}).json()["results"]
    words = list(rows[0]["probs"])
    np.testing.assert_allclose([[r["probs"][w] for w in words] for r in rows], want, atol=1e-6)


def test_restack_and_remove(stacked, tmp_path):
    from sentiment_lora.stack import stack, unstack

    out = tmp_path / "run"
    shutil.copytree(stacked[0], out)
    first = ClassifierSpec.load(out).stack.model_file
    stack(out, "tfidf-nb", device="cpu")  # a second stack replaces the first, file and all
    spec = ClassifierSpec.load(out)
    assert spec.stack.baseline == "tfidf-nb" and not (out / first).exists()
    assert [p.name for p in (out / "stack").iterdir()] == [spec.stack.model_file.split("/")[1]]
    llm_threshold = spec.stack.llm_threshold
    unstack(out)
    spec = ClassifierSpec.load(out)
    assert spec.stack is None and spec.threshold == llm_threshold and not (out / "stack").exists()
    assert "stack" not in json.loads((out / "metrics.json").read_text())
    with pytest.raises(UserError, match="no stack"):
        unstack(out)


def test_a_pool_leaves_out_the_runs_validation_and_test_rows(tiny_run):
    from sentiment_lora.stack import pool_sample

    cfg = load_config(tiny_run / "config.yaml")
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    held = set(data.val.texts) | set(data.test.texts)
    pool, dropped = pool_sample(cfg.data.dataset, cfg.data, cfg.prompt.label_words, held)
    assert dropped >= len(data.val) and not held & set(pool.texts)
    assert set(data.train.texts) <= set(pool.texts)


def test_bad_stacks_are_one_line_errors(stacked, tiny_config, tmp_path, capsys):
    from sentiment_lora.classifier import load_stack_model, save_stack_model
    from sentiment_lora.stack import stack
    from sentiment_lora.train import run

    # A tampered skops file: the sha256 in classifier.json catches it.
    out = tmp_path / "tampered"
    shutil.copytree(stacked[0], out)
    model_file = out / ClassifierSpec.load(out).stack.model_file
    model_file.write_bytes(model_file.read_bytes()[:-10])
    assert main(["predict", str(out), "--device", "cpu", "fine"]) == 2
    assert "is damaged" in capsys.readouterr().err
    # A skops file that would build a type we do not trust is refused before it is built.
    save_stack_model(Untrusted(), tmp_path / "odd.skops")
    with pytest.raises(UserError, match="does not trust"):
        load_stack_model(tmp_path / "odd.skops")
    (tmp_path / "junk.skops").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable skops file"):
        load_stack_model(tmp_path / "junk.skops")
    # A run without a validation sample has nothing to fit the combiner on.
    plain = tmp_path / "no-val"
    run(tiny_config("data.val_size=0", "train.epochs=1", "eval.verify_samples=0"), plain)
    with pytest.raises(UserError, match="validation sample"):
        stack(plain, "tfidf", device="cpu")
    assert main(["stack", str(plain), "--baseline", "tfidf", "--device", "cpu"]) == 2
    assert "validation sample" in capsys.readouterr().err
    assert not (plain / "stack").exists()
    with pytest.raises(UserError, match="stack.baseline"):
        tiny_config("data.val_size=0", "stack.baseline=tfidf")


def test_a_stack_recipe_in_the_config_stacks_after_training(tiny_config, tmp_path):
    import sentiment_lora.classifier as classifier_mod
    from sentiment_lora.train import run

    real, calls = classifier_mod.SentimentClassifier.proba_of_prompts, []

    def counted(self, ids, *args, **kwargs):
        calls.append(len(ids))
        return real(self, ids, *args, **kwargs)

    classifier_mod.SentimentClassifier.proba_of_prompts = counted
    try:
        metrics = run(tiny_config("train.epochs=1", "stack.baseline=tfidf"), tmp_path / "run")
    finally:
        classifier_mod.SentimentClassifier.proba_of_prompts = real
    spec = ClassifierSpec.load(tmp_path / "run")
    assert spec.stack.baseline == "tfidf"
    assert metrics["stack"]["test"]["stack"]["n"] == metrics["n"]
    # The stack reused the scores training had: only the reload check scored with the saved classifier.
    assert calls == [metrics["reload_check"]["n"]]
    # ... and they are the saved classifier's: stacking the finished folder again fits the same combiner.
    again = stack_mod.stack(tmp_path / "run", "tfidf", device="cpu")
    np.testing.assert_allclose(ClassifierSpec.load(tmp_path / "run").stack.coef, spec.stack.coef, atol=1e-4)
    assert again["test"]["stack"]["accuracy"] == metrics["stack"]["test"]["stack"]["accuracy"]


# --- the LLM's probabilities saved by training, reused by stack ---------------------------------------


@pytest.fixture
def counted_scoring(monkeypatch):
    """The rows the LLM scores, call by call."""
    real, calls = SentimentClassifier.proba_of_prompts, []

    def counted(self, ids, *args, **kwargs):
        calls.append(len(ids))
        return real(self, ids, *args, **kwargs)

    monkeypatch.setattr(SentimentClassifier, "proba_of_prompts", counted)
    return calls


def _run_copy(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    cfg = load_config(out / "config.yaml")
    return out, prepare_data(cfg.data, cfg.prompt.label_words)


def test_stack_reuses_the_probabilities_training_saved(tiny_run, tmp_path, monkeypatch):
    out, data = _run_copy(tiny_run, tmp_path)
    saved = json.loads((out / "llm_scores.json").read_text())
    clf = SentimentClassifier.load(out, device="cpu")
    assert saved["precision"] == clf.precision and saved["device"] == "cpu"
    # They are what the saved classifier computes, keyed by each text's sha256.
    for sample in (data.val, data.test):
        fresh = clf.proba_of_prompts(clf.encode(sample.texts))
        np.testing.assert_allclose([saved["probs"][stack_mod.text_key(t)] for t in sample.texts], fresh, atol=1e-4)

    def no_model(*args, **kwargs):
        raise AssertionError("stack loaded the LLM although every probability was saved")

    monkeypatch.setattr(stack_mod.SentimentClassifier, "load", no_model)
    section = stack_mod.stack(out, "tfidf", device="cpu")
    assert section["llm_rows_reused"] == len(data.val) + len(data.test)
    assert ClassifierSpec.load(out).stack is not None
    # A stack on top changes classifier.json, not the LLM: the next stack reuses them too.
    assert stack_mod.stack(out, "tfidf-nb", device="cpu")["llm_rows_reused"] == len(data.val) + len(data.test)


def test_no_reuse_once_the_classifiers_files_change(tiny_run, tmp_path, counted_scoring):
    from safetensors.torch import load_file, save_file

    out, data = _run_copy(tiny_run, tmp_path)
    weights = out / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 1.5 if "lora_B" in k else v for k, v in tensors.items()}, weights)
    ClassifierSpec.load(out, verify=False).save(out)  # classifier.json names the new files
    section = stack_mod.stack(out, "tfidf", device="cpu")
    assert section["llm_rows_reused"] == 0
    assert sum(counted_scoring) == len(data.val) + len(data.test)
    # What it scored is saved for the changed classifier, and reused by the next stack.
    counted_scoring.clear()
    assert stack_mod.stack(out, "tfidf", device="cpu")["llm_rows_reused"] == len(data.val) + len(data.test)
    assert counted_scoring == []


@pytest.mark.parametrize("change", [{"precision": "int8"}, {"device": "cuda"}, {"classifier": "sha256:0"},
                                    {"format": "sentiment-lora-llm-scores/0"}])
def test_no_reuse_of_probabilities_scored_otherwise(tiny_run, tmp_path, counted_scoring, change):
    out, data = _run_copy(tiny_run, tmp_path)
    path = out / "llm_scores.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    assert stack_mod.stack(out, "tfidf", device="cpu")["llm_rows_reused"] == 0
    assert sum(counted_scoring) == len(data.val) + len(data.test)


def test_a_text_whose_hash_is_not_saved_is_scored_again(tiny_run, tmp_path, counted_scoring):
    out, data = _run_copy(tiny_run, tmp_path)
    path = out / "llm_scores.json"
    saved = json.loads(path.read_text())
    key = stack_mod.text_key(data.test.texts[3])
    saved["probs"][stack_mod.text_key(data.test.texts[3] + " ")] = saved["probs"].pop(key)  # another text's
    saved["probs"][stack_mod.text_key(data.val.texts[0])] = [0.5]  # a malformed row
    path.write_text(json.dumps(saved))
    section = stack_mod.stack(out, "tfidf", device="cpu")
    assert section["llm_rows_reused"] == len(data.val) + len(data.test) - 2
    assert counted_scoring == [1, 1]  # the validation row, then the test row


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_scores_file_is_scored_again(tiny_run, tmp_path, counted_scoring, damage):
    out, data = _run_copy(tiny_run, tmp_path)
    path = out / "llm_scores.json"
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert stack_mod.stack(out, "tfidf", device="cpu")["llm_rows_reused"] == 0
    assert sum(counted_scoring) == len(data.val) + len(data.test)
    assert json.loads(path.read_text())["probs"]  # written whole again


def test_a_bf16_run_saves_what_its_saved_classifier_computes(tiny_config, tmp_path, monkeypatch):
    """In bf16 a batch's make-up moves a probability, so the reload check compares like with like:
    the saved numbers are those a stack scoring the same samples again would get."""
    from conftest import CPUINFO
    from sentiment_lora.precision import this_cpu

    monkeypatch.setenv("SENTIMENT_LORA_CPUINFO", str(CPUINFO / "amx.txt"))
    this_cpu.cache_clear()
    try:
        _bf16_run_checks(tiny_config, tmp_path / "run")
    finally:
        monkeypatch.undo()
        this_cpu.cache_clear()


def _bf16_run_checks(tiny_config, out):
    from sentiment_lora.train import run

    metrics = run(tiny_config("train.epochs=1", "eval.calibrate=true", "eval.precision=bf16"), out)
    assert metrics["precision"] == "bf16" and metrics["reload_check"]["max_prob_diff_same_batches"] <= 1e-4
    saved = json.loads((out / "llm_scores.json").read_text())
    assert saved["precision"] == "bf16"
    cfg = load_config(out / "config.yaml")
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    clf = SentimentClassifier.load(out, device="cpu")
    for sample in (data.val, data.test):
        fresh = clf.proba_of_prompts(clf.encode(sample.texts))
        np.testing.assert_allclose([saved["probs"][stack_mod.text_key(t)] for t in sample.texts], fresh, atol=1e-6)
    assert stack_mod.stack(out, "tfidf", device="cpu")["llm_rows_reused"] == len(data.val) + len(data.test)


def test_reuse_when_the_run_was_trained_from_a_relative_dataset_path(tiny_config, tiny_data_dir, tmp_path,
                                                                     monkeypatch, counted_scoring):
    """As `make demo` trains (data.dataset=../shared/imdb): the spec training holds names the
    dataset as typed, the saved one relative to the folder, and the stack must still match, from
    the training's shell folder and from any other."""
    from sentiment_lora.train import run

    monkeypatch.chdir(tiny_data_dir.parent)
    out = tmp_path / "run"
    run(tiny_config(f"data.dataset=./{tiny_data_dir.name}", "train.epochs=1", "eval.calibrate=true"), out)
    assert json.loads((out / "classifier.json").read_text())["data"]["dataset"] != f"./{tiny_data_dir.name}"
    cfg = load_config(out / "config.yaml")
    data = prepare_data(cfg.data, cfg.prompt.label_words)
    counted_scoring.clear()
    assert stack_mod.stack(out, "tfidf", device="cpu")["llm_rows_reused"] == len(data.val) + len(data.test)
    assert counted_scoring == []
    monkeypatch.chdir(out)  # another shell folder, from which the dataset as typed does not resolve
    assert stack_mod.stack(out, "tfidf", device="cpu")["llm_rows_reused"] == len(data.val) + len(data.test)
    assert counted_scoring == []


def test_the_test_sample_check_reads_long_texts_as_predictions_holds_them(tmp_path):
    """predictions.jsonl keeps a long review's preview; the check against --dataset compares
    like with like (a real IMDB run has reviews of thousands of characters)."""
    from sentiment_lora.data import DataBundle, Sample
    from sentiment_lora.evaluate import prediction_rows
    from sentiment_lora.storage import write_jsonl

    texts = ["short and sweet", "a long and winding review, " * 40]
    test = Sample(["test:0", "test:1"], texts, [1, 0])
    write_jsonl(tmp_path / "predictions.jsonl", prediction_rows(test, np.array([1, 0]), np.eye(2)[[1, 0]],
                                                                ["Negative", "Positive"]))
    bundle = DataBundle(Sample(), Sample(), test, {})
    stack_mod.check_test_sample(tmp_path, bundle, "the-same-data")  # the same rows pass
    for other in (Sample(["test:0", "test:1"], [texts[0], "An" + texts[1][1:]], [1, 0]),
                  Sample(["test:0", "test:2"], texts, [1, 0]), test.take([0])):
        with pytest.raises(UserError, match="does not give the test sample"):
            stack_mod.check_test_sample(tmp_path, DataBundle(Sample(), Sample(), other, {}), "other-data")


def test_a_moved_run_is_stacked_with_dataset(tiny_config, tiny_data_dir, tmp_path, monkeypatch, capsys):
    """A local dataset is recorded relative to the run folder; once the folder moves away from
    it, stack says so in one line naming --dataset, and --dataset draws the same samples."""
    from sentiment_lora.train import run

    monkeypatch.chdir(tiny_data_dir.parent)
    out = tmp_path / "run"
    run(tiny_config(f"data.dataset=./{tiny_data_dir.name}", "train.epochs=1", "eval.calibrate=true"), out)
    moved = tmp_path / "elsewhere" / "deeper" / "run"
    shutil.copytree(out, moved)
    capsys.readouterr()  # training's own output
    assert main(["stack", str(moved)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and "--dataset PATH" in err[0], err
    other = write_split_files(tmp_path / "other-imdb", seed=1)  # another dataset: other test rows
    for wrong, says in ((other, "does not give the test sample"), (tmp_path / "nowhere", "not found")):
        assert main(["stack", str(moved), "--dataset", str(wrong), "--device", "cpu"]) == 2
        # datasets' progress bars: a command's own process hides them, this test's imported them first
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "split:" not in line]
        assert len(err) == 1 and says in err[0], err
    assert main(["stack", str(moved), "--dataset", str(tiny_data_dir), "--device", "cpu"]) == 0
    assert json.loads((moved / "metrics.json").read_text())["stack"]["llm_rows_reused"] > 0
    assert main(["stack", str(moved), "--remove", "--dataset", str(tiny_data_dir)]) == 2
