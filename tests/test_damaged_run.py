"""A damaged run folder, file by file: each file in turn is deleted, truncated to half, has 16
bytes in its middle overwritten, and is replaced with valid JSON of the wrong shape. Then
``predict`` and ``export`` run on it through the CLI (in-process, for speed).

A file the classifier needs gives exactly one ``error:`` line and exit code 2; an optional
file (logs, plots, metrics, config) gives the same predictions as the intact folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sentiment_lora.cli import main

NEEDED = {"classifier.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
TEXTS = ["a great and moving film", "boring awful mess", "the plot was superb"]


def _delete(p: Path) -> None:
    p.unlink()


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _overwrite(p: Path) -> None:
    data = bytearray(p.read_bytes())
    mid = max(0, len(data) // 2 - 8)
    data[mid:mid + 16] = b"#" * 16
    p.write_bytes(bytes(data))


def _wrong_json(p: Path) -> None:
    p.write_text('{"unexpected": [1, 2, 3], "format": null}')


DAMAGES = {"delete": _delete, "truncate": _truncate, "overwrite16": _overwrite, "wrong-json": _wrong_json}


def _files(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def intact(tiny_run, capsys_module=None):
    """The predictions of the intact run folder, as the CLI prints them."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["predict", str(tiny_run), "--json", *TEXTS]) == 0
    return out.getvalue()


def test_the_matrix_covers_every_file(tiny_run):
    files = _files(tiny_run)
    assert NEEDED <= set(files) and len(files) >= 11, files


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", ["classifier.json", "config.yaml", "metrics.json", "predictions.jsonl",
                                  "train_log.jsonl", "training_curves.png", "confusion_matrix.png",
                                  "calibration.png", "report.html", "adapter/adapter_config.json",
                                  "adapter/adapter_model.safetensors"])
def test_damaged_file(name, damage, tiny_run, intact, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    DAMAGES[damage](run / name)
    capsys.readouterr()

    code = main(["predict", str(run), "--json", *TEXTS])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    if name in NEEDED:
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
        assert out == ""
    else:
        assert code == 0, err
        assert out == intact, "an optional file changed the predictions"

    code = main(["export", str(run), str(tmp_path / "exported")])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    if name in NEEDED:
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
        assert not (tmp_path / "exported").exists()
    else:
        assert code == 0, err
        exported = tmp_path / "exported"
        assert (exported / "classifier.json").is_file()
        # A damaged optional file is left out of the export, with a warning; an intact one is copied.
        if damage != "delete" and (run / name).parent == run and name.endswith((".json", ".yaml", ".png")):
            assert not (exported / name).exists() and "warning:" in err, err
