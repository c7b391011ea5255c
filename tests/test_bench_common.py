"""benchmarks/common.py: results record a data set by its public name and a content hash, never
by a local path; a benchmark clears only the folders it made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
IMDB_TITLE = "# IMDB Large Movie Review Dataset (Maas et al., ACL 2011)"


def test_a_local_folder_is_recorded_by_its_public_name_and_content(tmp_path):
    common = load_benchmark("common")
    data = tmp_path / "imdb"
    data.mkdir()
    (data / "README.md").write_text(IMDB_TITLE + "\n\nnotes\n")
    (data / "train.parquet").write_bytes(b"rows")
    (data / "test.parquet").write_bytes(b"more rows")
    first = common.dataset_record(str(data))
    assert first["name"] == "stanfordnlp/imdb" and first["files"] == ["test.parquet", "train.parquet"]
    assert str(tmp_path) not in json.dumps(first)
    (data / "README.md").write_text(IMDB_TITLE + "\n\nother notes\n")  # not data: the same hash
    assert common.dataset_record(str(data)) == first
    (data / "test.parquet").write_bytes(b"other rows")  # other content: another hash
    assert common.dataset_record(str(data))["sha256"] != first["sha256"]
    (data / "README.md").write_text("# my reviews\n")
    assert common.dataset_record(str(data))["name"] is None  # unknown: no name is made up
    assert common.dataset_record("stanfordnlp/imdb") == {"name": "stanfordnlp/imdb", "sha256": None, "files": None}


def test_no_result_records_a_dataset_as_a_local_path():
    def datasets(obj):
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key == "dataset":
                    yield value
                yield from datasets(value)
        elif isinstance(obj, list):
            for value in obj:
                yield from datasets(value)

    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        for value in datasets(json.loads(path.read_text())):
            name = value["name"] if isinstance(value, dict) else value
            assert name is None or not (name.startswith((".", "/", "~")) or Path(name).is_dir()), (path.name, name)
            if isinstance(value, dict) and value["files"]:
                assert value["sha256"].startswith("sha256:"), path.name


def test_the_stolen_share_is_steal_over_all_the_time_between_two_readings():
    common = load_benchmark("common")
    before = common.cpu_times("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n")
    after = common.cpu_times("cpu  160 0 70 900 10 0 0 100 0 0\n")
    assert before["steal"] == 40 and after["idle"] == 900
    assert common.stolen_share(before, after) == 60 / 240  # 60 + 20 + 100 + 60 ticks in all
    assert common.stolen_share(before, before) is None  # no time passed
    assert common.stolen_share({}, after) is None  # no /proc/stat
    assert set(common.cpu_times()) <= set(common.STAT_FIELDS)  # this machine's, however many fields


def test_a_benchmark_clears_only_the_folders_it_made(tmp_path):
    common = load_benchmark("common")
    work = tmp_path / "work"
    mine = common.fresh_folder(work, "best_recipe", "bench_quality.py")
    assert mine == work / "best_recipe" and not mine.exists()
    mine.mkdir()
    (mine / "classifier.json").write_text("{}")
    assert not common.fresh_folder(work, "best_recipe", "bench_quality.py").exists()  # its own: cleared
    theirs = work / "fine_tuned"  # a user's own run, or another benchmark's part
    theirs.mkdir()
    (theirs / "classifier.json").write_text("{}")
    for bench in ("bench_quality.py", "bench_sst5.py"):
        with pytest.raises(SystemExit, match="did not make it; nothing there was touched"):
            common.fresh_folder(work, "fine_tuned", bench)
    assert (theirs / "classifier.json").read_text() == "{}"
    common.fresh_folder(work, "zero_shot", "bench_sst5.py").mkdir()
    with pytest.raises(SystemExit):  # made by another benchmark
        common.fresh_folder(work, "zero_shot", "bench_quality.py")
