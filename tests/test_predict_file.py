"""Predicting over files: every format, streaming, resume after a kill, flat memory."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import make_review
from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.cli import main
from sentiment_lora.errors import UserError
from sentiment_lora.predict import check_input, iter_records, predict_file, prepare_output

TEXTS = ["Great superb film, loved it", "awful boring mess", "The plot was dull and the acting terrible.",
         "a moving and delightful story", "it was the movie"]


@pytest.fixture(scope="module")
def clf(tiny_run):
    return SentimentClassifier.load(tiny_run)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_inputs(folder, texts):
    folder.mkdir(exist_ok=True)
    (folder / "in.txt").write_text("".join(t + "\n" for t in texts))
    (folder / "in.jsonl").write_text("".join(json.dumps({"text": t, "id": f"r{i}"}) + "\n"
                                             for i, t in enumerate(texts)))
    pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).to_csv(folder / "in.csv", index=False)
    pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).to_parquet(folder / "in.parquet")
    return folder


@pytest.mark.parametrize("suffix", ["txt", "jsonl", "csv", "parquet"])
def test_every_format_gives_the_classifiers_predictions(clf, tmp_path, suffix):
    folder = write_inputs(tmp_path, TEXTS)
    out = tmp_path / f"out-{suffix}.jsonl"
    id_field = None if suffix == "txt" else "id"
    r = predict_file(clf, folder / f"in.{suffix}", out, id_field=id_field, chunk_size=2, progress=False)
    assert r["rows"] == 5 and r["resumed_after"] == 0 and not (tmp_path / f"out-{suffix}.jsonl.partial").exists()
    got = rows(out)
    labels, probs = clf.predict(TEXTS, return_proba=True)
    assert [g["row"] for g in got] == list(range(5)) and [g["label"] for g in got] == labels
    assert np.abs(np.array([[g["probs"][w] for w in clf.label_words] for g in got]) - probs).max() < 1e-5
    if id_field:
        assert [g["id"] for g in got] == [f"r{i}" for i in range(5)]


def test_a_finished_output_is_not_overwritten_and_a_changed_input_not_continued(clf, tmp_path):
    folder = write_inputs(tmp_path, TEXTS)
    out = tmp_path / "out.jsonl"
    predict_file(clf, folder / "in.txt", out, progress=False)
    with pytest.raises(UserError, match="exists and is finished"):
        prepare_output(folder / "in.txt", out)
    out.write_text(out.read_text().splitlines(keepends=True)[0])
    (tmp_path / "out.jsonl.partial").write_text('{"input": "in.txt", "size": 1}')
    with pytest.raises(UserError, match="another or a changed input"):
        prepare_output(folder / "in.txt", out)
    with pytest.raises(UserError, match="name it \\*.jsonl"):
        prepare_output(folder / "in.txt", tmp_path / "out.csv")


def test_lines_split_only_on_newline_and_fields_may_be_huge(tmp_path):
    (tmp_path / "a.txt").write_bytes("one\rstill one\u2028and one\r\ntwo\n\n".encode())
    assert [r.text for r in iter_records(tmp_path / "a.txt")] == ["one\rstill one\u2028and one", "two"]
    big = "word " * 60000  # over the csv module's default 128 KiB field limit
    pd.DataFrame({"text": [big, "short"]}).to_csv(tmp_path / "b.csv", index=False)
    assert [len(r.text) for r in iter_records(tmp_path / "b.csv")] == [len(big), 5]
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"text": ""}\n')
    assert [r.text for r in iter_records(tmp_path / "c.jsonl")] == ["ok", None]


def test_empty_records_get_a_null_label_not_a_crash(clf, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "great film"}\n{"text": "  "}\n{"text": null}\n{"text": "dull"}\n')
    r = predict_file(clf, tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False)
    got = rows(tmp_path / "out.jsonl")
    assert r["empty"] == 2 and [g["label"] is None for g in got] == [False, True, True, False]
    assert got[1]["error"] == "empty text"


def run_cli(*args):
    return [sys.executable, "-m", "sentiment_lora.cli", *args]


def test_killed_mid_run_resumes_without_duplicates_or_gaps(tiny_run, clf, tmp_path):
    import random

    rng = random.Random(1)
    texts = [make_review(rng, i % 2, 6) for i in range(6000)]
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    args = run_cli("predict", str(tiny_run), "--file", str(tmp_path / "in.txt"), "--output", str(out),
                   "--chunk-size", "50")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or out.stat().st_size < 20000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = out.read_text().count("\n")  # whole rows; a kill may also leave part of the next
    assert 0 < done_before < len(texts), "the run should be killed mid-way"
    with open(out, "a") as f:
        f.write('{"row": 99999, "lab')  # as if killed mid-line
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"resumed at row {done_before}" in again.stderr
    got = rows(out)
    assert [g["row"] for g in got] == list(range(len(texts)))
    assert not (tmp_path / "out.jsonl.partial").exists()
    sample = rng.sample(range(len(texts)), 40)
    labels = clf.predict([texts[i] for i in sample])
    assert [got[i]["label"] for i in sample] == labels


PEAK = ("import resource, sys; from sentiment_lora.cli import main; rc = main(sys.argv[1:]); "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def peak_rss_mb(args) -> float:
    r = subprocess.run([sys.executable, "-c", PEAK, *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stderr.split("PEAK_KB")[-1].split()[0]) / 1024


MEMORY_BOUND_MB = 10


@pytest.mark.slow
def test_memory_stays_flat_in_the_files_size(tiny_run, tmp_path):
    """100k short lines must not need more memory than 1k: the input is streamed, the output appended."""
    import random

    rng = random.Random(2)
    for n in (1000, 100_000):
        (tmp_path / f"in{n}.txt").write_text("".join(make_review(rng, i % 2, 5) + "\n" for i in range(n)))
    small = peak_rss_mb(["predict", str(tiny_run), "--file", str(tmp_path / "in1000.txt"),
                         "--output", str(tmp_path / "o1.jsonl")])
    large = peak_rss_mb(["predict", str(tiny_run), "--file", str(tmp_path / "in100000.txt"),
                         "--output", str(tmp_path / "o2.jsonl")])
    assert len((tmp_path / "o2.jsonl").read_text().splitlines()) == 100_000
    print(f"peak RSS: 1k lines {small:.0f} MB, 100k lines {large:.0f} MB")
    assert large - small < MEMORY_BOUND_MB


def test_cli_file_to_stdout_and_errors_before_loading(tiny_run, tmp_path, capsys):
    folder = write_inputs(tmp_path, TEXTS)
    assert main(["predict", str(tiny_run), "--file", str(folder / "in.parquet"), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["text"] for x in lines] == TEXTS
    assert main(["predict", str(tiny_run), "--output", str(tmp_path / "o.jsonl"), "text"]) == 2
    assert "--output needs --file" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no-run"), "--file", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no-run"), "good", "   "]) == 2  # refused before any loading
    assert "text 2 is empty" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_classifier_gives_the_same_probabilities(tiny_run, clf):
    from torch._dynamo.utils import counters

    compiled = SentimentClassifier.load(tiny_run).compile()
    before = counters["frames"]["ok"]
    assert np.abs(compiled.predict_proba(TEXTS) - clf.predict_proba(TEXTS)).max() < 1e-5
    assert counters["frames"]["ok"] > before  # the scoring path really ran compiled


def test_malformed_records_after_the_first_are_reported_per_row(clf, tmp_path):
    lines = [json.dumps({"text": make_review(__import__("random").Random(i), i % 2), "id": i}) for i in range(70)]
    lines[66] = "{broken"
    lines[68] = json.dumps({"review": "no text field", "id": 68})
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    r = predict_file(clf, tmp_path / "in.jsonl", tmp_path / "out.jsonl", id_field="id", progress=False)
    got = rows(tmp_path / "out.jsonl")
    assert len(got) == 70 and r["empty"] == 2
    assert got[66]["label"] is None and "in.jsonl:67 is not valid JSON" in got[66]["error"]
    assert got[68]["label"] is None and "no string field 'text'" in got[68]["error"]
    assert all(g["label"] for i, g in enumerate(got) if i not in (66, 68))
    (tmp_path / "early.jsonl").write_text("\n".join(["{broken", *lines[:3]]) + "\n")
    with pytest.raises(UserError, match="early.jsonl:1 is not valid JSON"):  # the first records stop it early
        check_input(tmp_path / "early.jsonl")
    with pytest.raises(UserError, match="id field 'uid'"):
        check_input(tmp_path / "in.jsonl", id_field="uid")


def test_resume_refuses_another_classifier_and_a_second_writer(clf, tiny_run, tmp_path, interrupted_predict):
    import fcntl

    from sentiment_lora.export import export

    folder = write_inputs(tmp_path, TEXTS * 4)
    out = tmp_path / "out.jsonl"
    interrupted_predict(clf, folder / "in.txt", out, 5)
    assert len(rows(out)) == 5 and (tmp_path / "out.jsonl.partial").is_file()

    other = SentimentClassifier.load(export(tiny_run, tmp_path / "other", merge=True))
    other.threshold = 0.1  # another decision: its labels must not be mixed into this file
    with pytest.raises(UserError, match="by another classifier"):
        predict_file(other, folder / "in.txt", out, progress=False)
    with open(out, "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another 'sentiment-lora predict' is writing"):
            predict_file(clf, folder / "in.txt", out, progress=False)
    r = predict_file(clf, folder / "in.txt", out, chunk_size=5, progress=False)
    assert r["resumed_after"] == 5 and [g["row"] for g in rows(out)] == list(range(20))


def test_parquet_columns_are_checked_and_any_id_type_is_written(clf, tmp_path):
    import datetime

    pd.DataFrame({"n": [1, 2], "text": ["great film", "dull"]}).to_parquet(tmp_path / "a.parquet")
    with pytest.raises(UserError, match="column 'n' holds int64, not text"):
        check_input(tmp_path / "a.parquet", field="n")
    stamps = [datetime.datetime(2024, 1, d) for d in (1, 2)]
    pd.DataFrame({"when": stamps, "text": ["great film", "dull"]}).to_parquet(tmp_path / "b.parquet")
    predict_file(clf, tmp_path / "b.parquet", tmp_path / "b.jsonl", id_field="when", progress=False)
    assert [g["id"] for g in rows(tmp_path / "b.jsonl")] == ["2024-01-01 00:00:00", "2024-01-02 00:00:00"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot be written"):
        prepare_output(tmp_path / "b.parquet", blocker / "out.jsonl")
