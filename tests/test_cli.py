"""Bad input: one line on stderr, exit code 2, no traceback, nothing half-written."""

import os
import subprocess
import sys

import pytest

from sentiment_lora.cli import main
from sentiment_lora.predict import read_texts


def run_cli(*args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "sentiment_lora.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]


def test_unknown_config_key_exits_2(tmp_path):
    r = run_cli("train", "--set", "train.epoch=1", "--output-dir", str(tmp_path / "out"))
    assert_one_line_error(r, "unknown key 'train.epoch'")
    assert not (tmp_path / "out").exists()


def test_missing_dataset_exits_2_and_writes_nothing(tiny_model_dir, tmp_path):
    r = run_cli("train", "--config", "configs/smollm2-cpu.yaml", "--set", f"model.name_or_path={tiny_model_dir}",
                "--set", "model.gguf_file=null", "--set", "data.dataset=/no/such/imdb",
                "--output-dir", str(tmp_path / "out"))
    assert_one_line_error(r, "dataset '/no/such/imdb' not found")
    assert not (tmp_path / "out").exists()


def test_a_missing_dataset_is_found_before_any_model_is_looked_for(tmp_path):
    """The model does not exist either (a Hub lookup offline would wait on the network): the dataset,
    checked first and without importing torch, is what the one line names."""
    r = run_cli("train", "--set", "model.name_or_path=no-such-org/no-such-model", "--set", "data.dataset=/no/such/imdb",
                "--output-dir", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(r, "dataset '/no/such/imdb' not found")
    assert not (tmp_path / "out").exists()


def test_a_bad_dataset_is_named_before_any_model_is_looked_for(tiny_data_dir, tmp_path):
    """The dataset is there but cannot be trained on (no such text column), and the model does
    not exist: the data, prepared before the tokenizer and model load, is what the one line names."""
    r = run_cli("train", "--set", "model.name_or_path=no-such-org/no-such-model", "--set",
                f"data.dataset={tiny_data_dir}", "--set", "data.text_column=review",
                "--output-dir", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(r, "has no column 'review'")
    assert not (tmp_path / "out").exists()


def test_training_imports_scikit_learn_and_matplotlib_only_where_it_uses_them():
    """A run stopped or refused before its metrics and plots should not wait on their imports."""
    code = "import sys, sentiment_lora.train; print([m for m in ('sklearn', 'matplotlib') if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


def test_colliding_label_words_exit_2(tiny_model_dir, tiny_data_dir, tmp_path):
    # Sample sizes the tiny data holds: the data is checked first, so the collision is this command's one problem.
    r = run_cli("train", "--set", f"model.name_or_path={tiny_model_dir}", "--set", f"data.dataset={tiny_data_dir}",
                "--set", "data.train_size=48", "--set", "data.val_size=0", "--set", "data.test_size=24",
                "--set", "prompt.label_words=[Positive, Positive2]", "--output-dir", str(tmp_path / "out"))
    assert_one_line_error(r, "both start with token")
    assert not (tmp_path / "out").exists()


def test_missing_config_file_exits_2():
    assert_one_line_error(run_cli("train", "--config", "configs/nope.yaml"), "not found")


def test_run_folder_that_is_not_a_classifier(tmp_path):
    assert_one_line_error(run_cli("predict", str(tmp_path), "a text"), "not a classifier run folder")
    assert_one_line_error(run_cli("evaluate", str(tmp_path)), "not a classifier run folder")
    (tmp_path / "classifier.json").write_text("{broken")
    assert_one_line_error(run_cli("predict", str(tmp_path), "a text"), "not valid JSON")


def test_resume_without_a_run(tmp_path):
    assert_one_line_error(run_cli("train", "--resume"), "--resume needs --output-dir")
    assert_one_line_error(run_cli("train", "--resume", "--output-dir", str(tmp_path)), "holds no interrupted run")


@pytest.mark.parametrize("name, content, fragment", [
    ("empty.txt", b"", "holds no texts"),
    ("blank.txt", b"\n  \n", "holds no texts"),
    ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "is not UTF-8"),
    ("bad.jsonl", b'{"text": "ok"}\n{broken\n', "bad.jsonl:2 is not valid JSON"),
    ("nofield.jsonl", b'{"review": "ok"}\n', "no string field 'text'"),
    ("nocol.csv", b"review\nok\n", "no column 'text'"),
    ("x.pdf", b"%PDF", "unknown type"),
])
def test_bad_predict_files(tmp_path, name, content, fragment):
    from sentiment_lora.errors import UserError

    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(UserError, match=None) as info:
        read_texts(f)
    assert fragment in str(info.value)


def test_predict_file_errors_exit_2_before_loading(tmp_path, capsys):
    f = tmp_path / "empty.txt"
    f.write_text("")
    assert main(["predict", str(tmp_path), "--file", str(f)]) == 2
    assert "holds no texts" in capsys.readouterr().err


def test_good_predict_files(tmp_path):
    (tmp_path / "a.txt").write_text("first review\n\nsecond review\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n')
    (tmp_path / "c.csv").write_text('text,id\n"a, quoted review",1\nplain,2\n')
    assert read_texts(tmp_path / "a.txt") == ["first review", "second review"]
    assert read_texts(tmp_path / "b.jsonl") == ["one", "two"]
    assert read_texts(tmp_path / "c.csv") == ["a, quoted review", "plain"]


def test_empty_text_is_refused(tiny_config, tmp_path):
    from sentiment_lora.classifier import SentimentClassifier
    from sentiment_lora.config import ModelConfig, PromptConfig
    from sentiment_lora.errors import UserError
    from sentiment_lora.model import load_tokenizer
    from sentiment_lora.prompt import Prompt

    cfg = tiny_config()
    tok = load_tokenizer(ModelConfig(name_or_path=cfg.model.name_or_path))
    clf = SentimentClassifier(model=None, tokenizer=tok, prompt=Prompt(tok, PromptConfig()))
    with pytest.raises(UserError, match="text 2 is empty"):
        clf.predict(["fine", "   "])


def test_usage_errors_are_one_line():
    assert_one_line_error(run_cli("train", "--bogus"), "unrecognized arguments: --bogus")
    assert_one_line_error(run_cli("predict"), "run_dir")
    assert_one_line_error(run_cli("evaluate", "x", "--limit", "0"), "argument --limit: '0' must be 1 or more")


def test_help_lists_the_verbs():
    r = run_cli("--help")
    assert r.returncode == 0 and all(v in r.stdout for v in ("train", "evaluate", "predict"))


def test_undefined_metrics_print_as_n_a():
    from sentiment_lora.cli import format_metric

    assert format_metric(None) == "n/a" and format_metric(0.91234) == "0.9123"


def test_an_unexpected_error_is_one_line_and_exit_1_unless_debug(monkeypatch, capsys):
    import sentiment_lora.cli as cli
    from sentiment_lora.spec import ClassifierSpec

    def boom(folder):  # a bug in the first thing export does
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ClassifierSpec, "load", staticmethod(boom))
    assert cli.main(["export", "a", "b"]) == 1
    err = capsys.readouterr().err
    assert err == "internal error: RuntimeError: boom; rerun with --debug and report it\n"
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["export", "a", "b", "--debug"])


def test_errors_never_echo_terminal_controls(tmp_path):
    r = run_cli("predict", str(tmp_path / "evil\x1b[2Jname"), "x")
    assert r.returncode == 2 and "\x1b" not in r.stderr and "\\x1b[2J" in r.stderr


def test_the_gguf_loader_is_quiet_unless_verbose(tiny_gguf_dir, tmp_path, monkeypatch, capfd):
    from transformers.utils import logging as hf_logging

    from sentiment_lora.config import ModelConfig
    from sentiment_lora.model import load_base_model

    cfg = ModelConfig(name_or_path=str(tiny_gguf_dir), gguf_file="tiny.gguf")
    monkeypatch.setenv("SENTIMENT_LORA_CACHE", str(tmp_path / "quiet"))
    hf_logging.disable_progress_bar()
    try:
        load_base_model(cfg, __import__("torch").device("cpu"), __import__("torch").float32, None)
        assert "GGUF" not in capfd.readouterr().err
        hf_logging.enable_progress_bar()
        monkeypatch.setenv("SENTIMENT_LORA_CACHE", str(tmp_path / "verbose"))
        load_base_model(cfg, __import__("torch").device("cpu"), __import__("torch").float32, None)
        assert "GGUF" in capfd.readouterr().err
    finally:
        hf_logging.enable_progress_bar()
