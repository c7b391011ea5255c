"""The bad-input battery: each case runs the real CLI in a subprocess and must end with exit
code 2, exactly one stderr line starting ``error:``, no traceback, and no new or changed file
in its folder or in the run folder it reads.

Cases are grouped by class (the first field of each case); ``test_battery_size`` states the
counts, which the closing note of issue 9 quotes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

TINY = ["--set", "model.device=cpu", "--set", "prompt.max_length=40", "--set", "train.save_steps=0"]


def _parquet(folder: Path, train: list, test: list) -> None:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(train, columns=["text", "label"]).to_parquet(folder / "train.parquet")
    pd.DataFrame(test, columns=["text", "label"]).to_parquet(folder / "test.parquet")


def _damaged_run(tmp: Path, run: Path, change) -> None:
    shutil.copytree(run, tmp / "badrun")
    change(tmp / "badrun")


def _edit_spec(folder: Path, edit) -> None:
    """Edit classifier.json on purpose: without its checksum, so the fields themselves are checked."""
    d = json.loads((folder / "classifier.json").read_text())
    d.pop("checksum", None)
    edit(d)
    (folder / "classifier.json").write_text(json.dumps(d))


def _write(name: str, content: bytes):
    return lambda tmp, run: (tmp / name).write_bytes(content)


def _fifo(name: str):
    return lambda tmp, run: os.mkfifo(tmp / name)


def _file(name: str):
    return _write(name, b"not a folder\n")


def _foreign(tmp, run):
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")


def _unfinished(tmp, run):
    (tmp / "out").mkdir()
    (tmp / "out" / "config.yaml").write_text("train:\n  epochs: 1\n")


def _nonempty(name: str):
    def setup(tmp, run):
        (tmp / name).mkdir()
        (tmp / name / "keep.txt").write_text("x")
    return setup


def _finished_output(tmp, run):
    (tmp / "in.txt").write_text("a fine film\n")
    (tmp / "out.jsonl").write_text('{"row": 0}\n')


def _float_labels(tmp, run):
    _parquet(tmp / "d", [("good film", 0.5), ("bad film", 1.0)] * 10, [("ok film", 0.0), ("fine", 1.0)] * 4)


def _one_class(tmp, run):
    _parquet(tmp / "d", [(f"bad film number {i}", 0) for i in range(20)], [("ok", 0), ("fine", 1)] * 4)


def _label_out_of_range(tmp, run):
    _parquet(tmp / "d", [("good film", 0), ("bad film", 7)] * 10, [("ok", 0), ("fine", 1)] * 4)


def _empty_text_row(tmp, run):
    _parquet(tmp / "d", [("good film", 0), ("  ", 1)] * 10, [("ok", 0), ("fine", 1)] * 4)


def _no_data_files(tmp, run):
    (tmp / "d").mkdir()
    (tmp / "d" / "README.md").write_text("nothing here")


def _parquet_numbers(tmp, run):
    import pandas as pd

    pd.DataFrame({"text": [1, 2, 3]}).to_parquet(tmp / "n.parquet")


def _spec_change(edit):
    return lambda tmp, run: _damaged_run(tmp, run, lambda f: _edit_spec(f, edit))


def _truncate(name: str):
    def change(folder: Path):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return lambda tmp, run: _damaged_run(tmp, run, change)


def _delete(name: str):
    return lambda tmp, run: _damaged_run(tmp, run, lambda f: (f / name).unlink())


def _rewrite(name: str, content: bytes):
    return lambda tmp, run: _damaged_run(tmp, run, lambda f: (f / name).write_bytes(content))


def _threshold_changed(folder: Path) -> None:
    d = json.loads((folder / "classifier.json").read_text())
    d["threshold"] = 0.9  # checksum kept: a silent edit or corruption
    (folder / "classifier.json").write_text(json.dumps(d))


def _train(*extra: str) -> list:
    return ["train", "--set", "model.name_or_path={model}", "--set", "data.dataset={data}", *TINY, *extra,
            "--output-dir", "{tmp}/out"]


def _train_on(dataset: str, *extra: str) -> list:
    return ["train", "--set", "model.name_or_path={model}", "--set", f"data.dataset={dataset}", *TINY,
            "--set", "data.train_size=null", "--set", "data.test_size=null", *extra, "--output-dir", "{tmp}/out"]


# (class, id, argv, setup(tmp, run) or None, stdin bytes or None, fragment of the error line)
CASES = [
    # --- config values: refused before torch is imported
    ("config", "lora.r=inf", _train("--set", "lora.r=.inf"), None, None, "lora.r must be a finite number"),
    ("config", "lora.r=nan", _train("--set", "lora.r=nan"), None, None, "lora.r must be a finite number"),
    ("config", "seed=-1", _train("--set", "train.seed=-1"), None, None, "train.seed is -1"),
    ("config", "seed=2^32", _train("--set", "data.seed=4294967296"), None, None, "data.seed is 4294967296"),
    ("config", "epochs=inf", _train("--set", "train.epochs=.inf"), None, None, "train.epochs must be a finite"),
    ("config", "lr=inf", _train("--set", "train.lr=.inf"), None, None, "train.lr must be a finite number"),
    ("config", "lr=2", _train("--set", "train.lr=2"), None, None, "train.lr is 2"),
    ("config", "lr=0", _train("--set", "train.lr=0"), None, None, "train.lr is 0"),
    ("config", "batch_size=0", _train("--set", "train.batch_size=0"), None, None, "train.batch_size is 0"),
    ("config", "grad_accum=-3", _train("--set", "train.grad_accum=-3"), None, None, "train.grad_accum is -3"),
    ("config", "batch=1.5", _train("--set", "eval.batch_size=1.5"), None, None, "eval.batch_size must be a whole"),
    ("config", "batch=list", _train("--set", "eval.batch_size=[1]"), None, None, "eval.batch_size must be a number"),
    ("config", "dropout=1.5", _train("--set", "lora.dropout=1.5"), None, None, "lora.dropout is 1.5"),
    ("config", "threshold=1", _train("--set", "eval.threshold=1"), None, None, "eval.threshold is 1"),
    ("config", "warmup=1", _train("--set", "train.warmup_ratio=1"), None, None, "train.warmup_ratio"),
    ("config", "max_length=8", _train("--set", "prompt.max_length=8"), None, None, "prompt.max_length is 8"),
    ("config", "template-no-slot", _train("--set", "prompt.template=no slot"), None, None,
     "prompt.template must contain {text}"),
    ("config", "template-extra-field", _train("--set", "prompt.template={text} {x.y}"), None, None,
     "prompt.template has the field {x.y}"),
    ("config", "template-stray-brace", _train("--set", "prompt.template={text} }"), None, None, "stray brace"),
    ("config", "template-only-slot", _train("--set", "prompt.template={text}"), None, None, "holds nothing but"),
    ("config", "one-label-word", _train("--set", "prompt.label_words=[Good]"), None, None, "at least two"),
    ("config", "same-label-words", _train("--set", "prompt.label_words=[a, a]"), None, None, "must be distinct"),
    ("config", "scheduler", _train("--set", "train.scheduler=exp"), None, None, "train.scheduler is 'exp'"),
    ("config", "dtype", _train("--set", "model.dtype=float8"), None, None, "model.dtype is 'float8'"),
    ("config", "device", _train("--set", "model.device=tpu"), None, None, "model.device is 'tpu'"),
    ("config", "no-targets", _train("--set", "lora.target_modules=[]"), None, None, "lora.target_modules"),
    ("config", "unknown-key", _train("--set", "train.epoch=1"), None, None, "unknown key 'train.epoch'"),
    ("config", "unknown-section", _train("--set", "trian.epochs=1"), None, None, "unknown section 'trian'"),
    ("config", "no-equals", _train("--set", "train.epochs"), None, None, "section.key=value"),
    ("config", "calibrate-no-val", _train("--set", "eval.calibrate=true", "--set", "data.val_size=0"), None, None,
     "needs a validation sample"),
    ("config", "label-values-count", _train("--set", "data.label_values=[a, b, c]"), None, None,
     "data.label_values has 3 values"),
    ("config", "file-missing", ["train", "--config", "{tmp}/nope.yaml"], None, None, "not found"),
    ("config", "file-is-folder", ["train", "--config", "{tmp}"], None, None, "is a folder, not a file"),
    ("config", "file-is-fifo", ["train", "--config", "{tmp}/c.yaml"], _fifo("c.yaml"), None, "not a regular file"),
    ("config", "file-bad-yaml", ["train", "--config", "{tmp}/c.yaml"], _write("c.yaml", b"train: [1\n"), None,
     "not valid YAML"),
    ("config", "file-latin1", ["train", "--config", "{tmp}/c.yaml"], _write("c.yaml", b"train:\n  x: caf\xe9\n"),
     None, "not valid YAML"),
    ("config", "file-a-list", ["train", "--config", "{tmp}/c.yaml"], _write("c.yaml", b"- 1\n- 2\n"), None,
     "must be a mapping"),
    ("config", "file-bad-section", ["train", "--config", "{tmp}/c.yaml"], _write("c.yaml", b"train: 3\n"), None,
     "section 'train' must be a mapping"),
    # --- numbers and options on the command line
    ("cli", "evaluate-batch-size--1", ["evaluate", "{run}", "--batch-size", "-1"], None, None,
     "--batch-size: '-1' must be 1 or more"),
    ("cli", "predict-batch-size-0", ["predict", "{run}", "x", "--batch-size", "0"], None, None,
     "--batch-size: '0' must be 1 or more"),
    ("cli", "limit-0", ["evaluate", "{run}", "--limit", "0"], None, None, "--limit: '0' must be 1 or more"),
    ("cli", "chunk-size-abc", ["predict", "{run}", "x", "--chunk-size", "abc"], None, None,
     "'abc' is not a whole number"),
    ("cli", "unknown-option", ["predict", "{run}", "x", "--bogus"], None, None, "unrecognized arguments: --bogus"),
    ("cli", "dtype-int8", ["evaluate", "{run}", "--dtype", "int8"], None, None, "invalid choice: 'int8'"),
    ("cli", "output-without-file", ["predict", "{run}", "x", "--output", "{tmp}/o.jsonl"], None, None,
     "--output needs --file"),
    ("cli", "texts-and-file", ["predict", "{run}", "x", "--file", "{tmp}/in.txt"], _write("in.txt", b"a\n"), None,
     "not both"),
    ("cli", "resume-no-dir", ["train", "--resume"], None, None, "--resume needs --output-dir"),
    ("cli", "tfidf-no-dataset", ["baseline", "tfidf"], None, None, "needs --dataset"),
    ("cli", "tfidf-bad-set", ["baseline", "tfidf", "--dataset", "{data}", "--set", "data.sampling=some"], None,
     None, "data.sampling is 'some'"),
    ("cli", "zero-shot-nb", ["baseline", "zero-shot", "--nb"], None, None, "--nb applies to baseline tfidf"),
    ("cli", "no-verb", [], None, None, "the following arguments are required"),
    # --- output folders and files: checked before any model loads
    ("output", "train-dir-is-file", _train(), _file("out"), None, "is a file, not a folder"),
    ("output", "train-dir-foreign", _train(), _foreign, None, "holds files that are not a training run's"),
    ("output", "train-dir-finished", ["train", "--output-dir", "{run}"], None, None, "holds a finished classifier"),
    ("output", "resume-finished", ["train", "--resume", "--output-dir", "{run}"], None, None,
     "there is nothing to resume"),
    ("output", "resume-empty", ["train", "--resume", "--output-dir", "{tmp}"], None, None,
     "holds no interrupted run"),
    ("output", "train-dir-unwritable", _train()[:-1] + ["/sys/sentiment-lora-out"], None, None, "cannot be written"),
    ("output", "tfidf-dir-is-file", ["baseline", "tfidf", "--dataset", "{data}", "--output-dir", "{tmp}/out"],
     _file("out"), None, "is a file, not a folder"),
    ("output", "tfidf-dir-nonempty", ["baseline", "tfidf", "--dataset", "{data}", "--output-dir", "{tmp}/out"],
     _nonempty("out"), None, "exists and is not empty"),
    ("output", "evaluate-dir-is-file", ["evaluate", "{run}", "--output-dir", "{tmp}/out"], _file("out"), None,
     "is a file, not a folder"),
    ("output", "evaluate-dir-nonempty", ["evaluate", "{run}", "--output-dir", "{tmp}/out"], _nonempty("out"), None,
     "exists and is not empty"),
    ("output", "evaluate-dir-unwritable", ["evaluate", "{run}", "--output-dir", "/sys/sentiment-lora-eval"], None,
     None, "cannot be written"),
    ("output", "export-dir-is-file", ["export", "{run}", "{tmp}/out"], _file("out"), None, "is a file, not a folder"),
    ("output", "export-dir-nonempty", ["export", "{run}", "{tmp}/out"], _nonempty("out"), None,
     "exists and is not empty"),
    ("output", "predict-output-not-jsonl", ["predict", "{run}", "--file", "{tmp}/in.txt", "--output", "{tmp}/o.csv"],
     _write("in.txt", b"a fine film\n"), None, "name it *.jsonl"),
    ("output", "predict-output-is-dir", ["predict", "{run}", "--file", "{tmp}/in.txt", "--output", "{tmp}/o.jsonl"],
     lambda tmp, run: ((tmp / "in.txt").write_text("a\n"), (tmp / "o.jsonl").mkdir()), None, "is a folder"),
    ("output", "predict-output-finished", ["predict", "{run}", "--file", "{tmp}/in.txt", "--output",
                                           "{tmp}/out.jsonl"], _finished_output, None, "exists and is finished"),
    ("output", "predict-output-unwritable", ["predict", "{run}", "--file", "{tmp}/in.txt", "--output",
                                             "/sys/sentiment-lora.jsonl"], _write("in.txt", b"a\n"), None,
     "cannot be written"),
    # --- run folders
    ("run-folder", "missing", ["predict", "{tmp}/nope", "x"], None, None, "not found"),
    ("run-folder", "is-a-file", ["predict", "{tmp}/f", "x"], _file("f"), None, "is a file, not a folder"),
    ("run-folder", "no-spec", ["predict", "{tmp}", "x"], None, None, "not a classifier run folder"),
    ("run-folder", "unfinished", ["evaluate", "{tmp}/out"], _unfinished, None, "holds an unfinished training run"),
    ("run-folder", "spec-not-json", ["predict", "{tmp}/badrun", "x"],
     _rewrite("classifier.json", b"{broken"), None, "not valid JSON"),
    ("run-folder", "spec-no-prompt", ["predict", "{tmp}/badrun", "x"], _spec_change(lambda d: d.pop("prompt")), None,
     "missing field 'prompt'"),
    ("run-folder", "threshold-text", ["predict", "{tmp}/badrun", "x"],
     _spec_change(lambda d: d.update(threshold="high")), None, "field 'threshold' is 'high'"),
    ("run-folder", "spec-changed", ["predict", "{tmp}/badrun", "x"],
     lambda tmp, run: _damaged_run(tmp, run, _threshold_changed), None, "changed after it was saved"),
    ("run-folder", "adapter-truncated", ["predict", "{tmp}/badrun", "x"],
     _truncate("adapter/adapter_model.safetensors"), None, "adapter_model.safetensors is damaged"),
    ("run-folder", "adapter-config-deleted", ["evaluate", "{tmp}/badrun"], _delete("adapter/adapter_config.json"),
     None, "adapter_config.json not found"),
    # --- inputs
    ("input", "stdin-latin1", ["predict", "{run}"], None, "caf\xe9 cr\xe8me\n".encode("latin-1"),
     "standard input:1 is not UTF-8"),
    ("input", "stdin-empty", ["predict", "{run}"], None, b"", "standard input holds no texts"),
    ("input", "stdin-blank", ["predict", "{run}"], None, b"\n   \n\t\n", "standard input holds no texts"),
    ("input", "arg-empty", ["predict", "{run}", "good", ""], None, None, "text 2 is empty"),
    ("input", "arg-blank", ["predict", "{run}", "good", "   "], None, None, "text 2 is empty"),
    ("input", "arg-not-utf8", ["predict", "{run}", b"caf\xe9"], None, None, "text 1 is not valid UTF-8"),
    ("input", "file-missing", ["predict", "{run}", "--file", "{tmp}/nope.txt"], None, None, "not found"),
    ("input", "file-is-folder", ["predict", "{run}", "--file", "{tmp}"], None, None, "is a folder"),
    ("input", "file-is-fifo", ["predict", "{run}", "--file", "{tmp}/p.txt"], _fifo("p.txt"), None,
     "not a regular file"),
    ("input", "file-type", ["predict", "{run}", "--file", "{tmp}/x.pdf"], _write("x.pdf", b"%PDF"), None,
     "unknown type '.pdf'"),
    ("input", "file-empty", ["predict", "{run}", "--file", "{tmp}/e.txt"], _write("e.txt", b""), None,
     "holds no texts"),
    ("input", "txt-latin1", ["predict", "{run}", "--file", "{tmp}/l.txt"], _write("l.txt", b"ok\ncaf\xe9\n"), None,
     "l.txt:2 is not UTF-8"),
    ("input", "jsonl-broken", ["predict", "{run}", "--file", "{tmp}/b.jsonl"], _write("b.jsonl", b'{"text": "a"}\n{'),
     None, "b.jsonl:2 is not valid JSON"),
    ("input", "jsonl-no-field", ["predict", "{run}", "--file", "{tmp}/b.jsonl"], _write("b.jsonl", b'{"review": 1}\n'),
     None, "no string field 'text'"),
    ("input", "jsonl-surrogate", ["predict", "{run}", "--file", "{tmp}/s.jsonl"],
     _write("s.jsonl", b'{"text": "bad \\ud800 text"}\n'), None, "is not valid UTF-8"),
    ("input", "csv-no-column", ["predict", "{run}", "--file", "{tmp}/c.csv"], _write("c.csv", b"review\nok\n"), None,
     "no column 'text'"),
    ("input", "csv-latin1", ["predict", "{run}", "--file", "{tmp}/c.csv"], _write("c.csv", b"text\ncaf\xe9\n"), None,
     "is not UTF-8"),
    ("input", "parquet-garbage", ["predict", "{run}", "--file", "{tmp}/g.parquet"], _write("g.parquet", b"PAR1junk"),
     None, "not a readable parquet file"),
    ("input", "parquet-numbers", ["predict", "{run}", "--file", "{tmp}/n.parquet"], _parquet_numbers, None,
     "not text"),
    ("input", "id-field-missing", ["predict", "{run}", "--file", "{tmp}/i.jsonl", "--id-field", "key"],
     _write("i.jsonl", b'{"text": "fine"}\n'), None, "id field 'key'"),
    # --- data: the tokenizer loads first, then the data is checked before the model
    ("data", "dataset-missing", _train_on("{tmp}/none"), None, None, "not found"),
    ("data", "dataset-no-files", _train_on("{tmp}/d"), _no_data_files, None, "holds no parquet, csv or jsonl"),
    ("data", "labels-half", _train_on("{tmp}/d"), _float_labels, None, "label 0.5 is not a class index"),
    ("data", "one-class", _train_on("{tmp}/d"), _one_class, None, "has no example of label 1"),
    ("data", "label-out-of-range", _train_on("{tmp}/d"), _label_out_of_range, None, "label 7 is outside"),
    ("data", "empty-text-row", _train_on("{tmp}/d"), _empty_text_row, None, "has an empty or missing text"),
    ("data", "no-text-column", _train_on("{data}", "--set", "data.text_column=review"), None, None,
     "has no column 'review'"),
]


def _snapshot(*folders: Path) -> dict:
    out = {}
    for folder in folders:
        if not folder.exists():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_fifo():
                out[str(p)] = "fifo"
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "dir"
    return out


def run_cli(argv, stdin=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "sentiment_lora.cli", *argv], input=stdin, capture_output=True,
                          timeout=timeout)


def assert_one_error_line(result, fragment: str) -> str:
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    return lines[0]


def test_battery_size():
    by_class = Counter(c[0] for c in CASES)
    assert len({(c[0], c[1]) for c in CASES}) == len(CASES), "case ids must be distinct"
    assert len(CASES) >= 60 and len(by_class) >= 6, by_class


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_bad_input(case, tmp_path, tiny_run, tiny_model_dir, tiny_data_dir):
    _, _, argv, setup, stdin, fragment = case
    if setup is not None:
        setup(tmp_path, tiny_run)
    subs = {"{run}": str(tiny_run), "{model}": str(tiny_model_dir), "{data}": str(tiny_data_dir),
            "{tmp}": str(tmp_path)}

    def fill(arg):
        if isinstance(arg, bytes):
            return arg
        for key, value in subs.items():
            arg = arg.replace(key, value)
        return arg

    before = _snapshot(tmp_path, tiny_run)
    result = run_cli([fill(a) for a in argv], stdin=stdin)
    assert_one_error_line(result, fragment)
    assert _snapshot(tmp_path, tiny_run) == before, "a failed command changed files"


def test_a_missing_extra_is_one_line_that_names_it():
    import json

    from sentiment_lora.errors import UserError, require

    with pytest.raises(UserError, match=r"^export --onnx needs no_such_pkg: pip install 'sentiment-lora\[onnx\]'$"):
        require("no_such_pkg.sub", "onnx", "export --onnx")
    assert require("json", "onnx", "anything") is json
