"""One rule for an empty text everywhere: nothing left once markup, white space and control
characters are removed."""

import json
import time

import pytest

from sentiment_lora.cli import main
from sentiment_lora.data import is_blank, text_problem

BLANK = ["", "   ", "<br /><br />", "<BR>\t<br/>", "\x00\x00\x00", "\x00 <br /> \x1f", "\u00a0\u2003"]
TEXT = ["ok", "<br />fine<br />", "a\x00b", "<b>bold</b>"]


@pytest.mark.parametrize("text", BLANK)
def test_markup_and_control_characters_alone_are_empty(text):
    assert is_blank(text) and text_problem(text) == "is empty"


@pytest.mark.parametrize("text", TEXT)
def test_anything_else_is_text(text):
    assert not is_blank(text) and text_problem(text) is None


def test_predict_and_the_server_agree(tiny_run, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from sentiment_lora.serve import create_app

    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a fine film", "<br /><br />", "\x00\x00"]))
    assert main(["predict", str(tiny_run), "--file", str(path), "--output", str(tmp_path / "o.jsonl"),
                 "--device", "cpu"]) == 0
    got = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [g["label"] is None for g in got] == [False, True, True]
    assert main(["predict", str(tiny_run), "<br /><br />"]) == 2
    assert "text 1 is empty" in capsys.readouterr().err
    with TestClient(create_app(tiny_run, device="cpu")) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.1)
        r = client.post("/predict", json={"inputs": "\x00\x00"})
        assert r.status_code == 422 and "input 0 is empty" in r.json()["error"]
