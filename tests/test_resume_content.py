"""A resumed ``predict --output`` continues only the input it was made from, checked by content."""

import json
import os

import pytest

from sentiment_lora.classifier import SentimentClassifier
from sentiment_lora.errors import UserError
from sentiment_lora.predict import predict_file

FIRST = [f"a fine film number {i}" for i in range(12)]


@pytest.fixture(scope="module")
def clf(tiny_run):
    return SentimentClassifier.load(tiny_run, device="cpu")


def test_an_input_replaced_with_the_same_size_and_time_is_refused(clf, tmp_path, interrupted_predict):
    path, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    path.write_text("".join(t + "\n" for t in FIRST))
    interrupted_predict(clf, path, out, 4)
    st = path.stat()
    # Same length, other words, and the old times put back: what `cp -p` or `rsync -t` leave.
    path.write_text("".join(t.replace("fine", "dull") + "\n" for t in FIRST))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    before = out.read_bytes()
    with pytest.raises(UserError, match="are not the ones the unfinished --output"):
        predict_file(clf, path, out, chunk_size=4, progress=False)
    assert out.read_bytes() == before


def test_the_same_input_touched_or_grown_resumes(clf, tmp_path, interrupted_predict):
    path, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in FIRST))
    interrupted_predict(clf, path, out, 4)
    with open(path, "a") as f:  # more rows at the end, a new modification time: the rows done are unchanged
        f.write(json.dumps({"text": "one more"}) + "\n")
    r = predict_file(clf, path, out, chunk_size=4, progress=False)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert r["resumed_after"] == 4 and [g["row"] for g in got] == list(range(13))
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_a_change_in_the_rows_named_ahead_is_seen(clf, tmp_path, interrupted_predict):
    """The sidecar names a chunk before its lines are written: a change there is caught too."""
    path, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    path.write_text("".join(t + "\n" for t in FIRST))
    interrupted_predict(clf, path, out, 4)
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace("fine", "dull")  # row 5: in the chunk that was being scored
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(UserError, match="first 8 rows"):
        predict_file(clf, path, out, chunk_size=4, progress=False)
