"""Memory is bounded by the token budget and the line limit, never by the length of one input.

A text is cut by characters before it is tokenized, keeping the same tokens the prompt keeps
of the whole text; a line over ``--max-line-bytes`` is a row with an error, skipped without
ever being held whole.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sentiment_lora.config import PromptConfig
from sentiment_lora.prompt import Prompt

WORDS = ["great", "awful", "plot", "the", "film", "café", "naïve", "—", "😀", "and", "boring", "x" * 40]


def _long_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


@pytest.mark.parametrize("mode", ["head", "tail", "head+tail"])
def test_the_cut_keeps_the_tokens_of_the_whole_text(tiny_tokenizer, mode):
    prompt = Prompt(tiny_tokenizer, PromptConfig(max_length=64, truncation=mode))
    texts = [_long_text(20_000, seed) for seed in range(3)]
    texts += ["a" * 300_000, "no-spaces-" * 30_000, "short and fine"]
    clipped = prompt.encode(texts)
    assert any(len(prompt.clip(t)) < len(t) for t in texts)  # the cut did happen
    prompt.char_limit = None  # tokenize whole texts, as before the cut existed
    whole = prompt.encode(texts)
    assert clipped.input_ids == whole.input_ids and clipped.truncated == whole.truncated


def test_a_long_text_keeps_its_probabilities(tiny_run):
    from sentiment_lora.classifier import SentimentClassifier

    clf = SentimentClassifier.load(tiny_run, device="cpu")
    texts = [_long_text(40_000, 1), "a fine film"]
    cut = clf.predict_proba(texts)
    assert len(clf.prompt.clip(texts[0])) < len(texts[0])
    clf.prompt.char_limit = None
    np.testing.assert_array_equal(cut, clf.predict_proba(texts))


_PEAK = """
import resource, sys
from sentiment_lora.cli import main
code = main(sys.argv[1:])
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code, file=sys.stderr)
"""


def _predict_peak_kb(run: Path, file: Path, out: Path, *extra: str) -> int:
    r = subprocess.run([sys.executable, "-c", _PEAK, "predict", str(run), "--file", str(file), "--output", str(out),
                        "--device", "cpu", *extra], capture_output=True, text=True, timeout=300)
    peak = [line for line in r.stderr.splitlines() if line.startswith("PEAK")]
    assert peak and peak[0].split()[2] == "0", r.stderr[-2000:]
    return int(peak[0].split()[1])


def test_a_50_mb_line_costs_no_more_memory_than_a_short_one(tiny_run, tmp_path):
    short, huge, long_ok = tmp_path / "short.txt", tmp_path / "huge.txt", tmp_path / "long.txt"
    short.write_text("a fine film\n")
    block = _long_text(200_000).encode()  # about 1.3 MB
    with open(huge, "wb") as f:
        for _ in range(50_000_000 // len(block) + 1):
            f.write(block + b" ")
        f.write(b"\nan awful film\n")
    long_ok.write_bytes(block[:4_000_000] + b"\n")
    base = _predict_peak_kb(tiny_run, short, tmp_path / "short.jsonl")
    over = _predict_peak_kb(tiny_run, huge, tmp_path / "huge.jsonl")
    under = _predict_peak_kb(tiny_run, long_ok, tmp_path / "long.jsonl", "--max-line-bytes", "5000000")
    assert over - base < 100_000, (base, over)
    assert under - base < 100_000, (base, under)
    rows = [json.loads(line) for line in (tmp_path / "huge.jsonl").read_text().splitlines()]
    assert rows[0]["label"] is None and "longer than 10,000,000 bytes" in rows[0]["error"]
    assert rows[1]["label"] is not None  # the line after it is read as usual
    assert json.loads((tmp_path / "long.jsonl").read_text())["label"] is not None


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "parquet"])
def test_every_reader_turns_an_overlong_text_into_an_error_row(kind, tmp_path):
    import pandas as pd

    from sentiment_lora.predict import check_input, iter_records

    texts = ["first fine text", "y" * 5000, "third fine text"]
    path = tmp_path / f"in.{kind}"
    if kind == "txt":
        path.write_text("\n".join(texts) + "\n")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    else:
        frame = pd.DataFrame({"text": texts})
        frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path)
    check_input(path, max_line_bytes=1000)
    records = list(iter_records(path, max_line_bytes=1000))
    assert [r.text for r in records] == [texts[0], None, texts[2]]
    assert [r.row for r in records] == [0, 1, 2]
    assert "longer than 1,000 bytes" in records[1].error


def test_a_first_line_too_long_is_a_row_not_a_refusal(tmp_path):
    from sentiment_lora.predict import check_input, iter_records

    path = tmp_path / "in.txt"
    path.write_text("z" * 3000 + "\n")
    check_input(path, max_line_bytes=1000)
    assert [r.error is not None for r in iter_records(path, max_line_bytes=1000)] == [True]
