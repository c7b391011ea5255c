"""``predict --engine ray``: Ray Data actors on a local Ray instance give what one process gives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ray.data")
pytestmark = pytest.mark.slow  # each call starts Ray actors that import torch and load the classifier

from conftest import make_review  # noqa: E402
from sentiment_lora.classifier import SentimentClassifier  # noqa: E402
from sentiment_lora.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def reviews():
    import random

    rng = random.Random(3)
    texts = [make_review(rng, i % 2, 10 + i % 7) for i in range(37)]
    texts[5] = "   "  # no text: a null label, not a failure
    return pd.DataFrame({"review_id": [f"r{i:03d}" for i in range(len(texts))], "text": texts})


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    yield
    import ray

    ray.shutdown()


def _read(folder):
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    assert files, "no shard written"
    return pd.concat([pq.read_table(f).to_pandas() for f in files]).sort_values("review_id").reset_index(drop=True)


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv"])
def test_ray_engine_equals_one_process(kind, reviews, tiny_run, tmp_path, capsys):
    source = tmp_path / f"in.{kind}"
    if kind == "parquet":
        reviews.to_parquet(source)
    elif kind == "jsonl":
        source.write_text("".join(json.dumps(r) + "\n" for r in reviews.to_dict("records")))
    else:
        reviews.to_csv(source, index=False)
    out = tmp_path / "out"
    actors = "2" if kind == "parquet" else "1"  # two actors once; each loads the classifier, the reader is the point
    rc = main(["predict", str(tiny_run), "--engine", "ray", "--file", str(source), "--output", str(out),
               "--id-field", "review_id", "--concurrency", actors, "--chunk-size", "8", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert f"{len(reviews)} predictions in" in capsys.readouterr().err
    got = _read(out)
    assert got["review_id"].tolist() == reviews["review_id"].tolist()  # every id once
    assert len(list(out.glob("*.parquet"))) == 1  # 100,000 rows a shard by default
    clf = SentimentClassifier.load(tiny_run)
    keep = [i for i, t in enumerate(reviews["text"]) if isinstance(t, str) and t.strip()]
    want = clf.predict_proba([reviews["text"][i] for i in keep])
    have = np.array([[got["probs"][i][w] for w in clf.label_words] for i in keep])
    assert list(got.columns) == ["review_id", "label", "prob", "probs", "error"]
    assert np.abs(have - want).max() <= 1e-5
    assert got["label"][keep].tolist() == clf.labels_of(want)
    blank = [i for i in range(len(reviews)) if i not in keep]
    assert got["label"][blank].isna().all() and (got["error"][blank] == "empty text").all()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_one_small_file_is_spread_over_blocks_and_shards_are_sized(reviews, tiny_run, tmp_path):
    """37 rows in one small file are one block as read, and the actor pool hands out whole
    blocks: unsplit, one actor would score them all, and they would make one shard whatever the
    shard size. (This checks the blocks; the benchmark showed both actors busy. The default size,
    one shard for these rows, is checked by ``test_ray_engine_equals_one_process``.)"""
    from sentiment_lora.cluster import predict_ray

    src = tmp_path / "in.parquet"
    reviews.to_parquet(src)
    r = predict_ray(tiny_run, [str(src)], str(tmp_path / "o"), id_field="review_id", batch_size=8,
                    rows_per_shard=8, concurrency=1)
    sizes = [len(pd.read_parquet(f)) for f in (tmp_path / "o").glob("*.parquet")]
    assert r["rows"] == sum(sizes) == len(reviews) and r["shards"] == len(sizes) >= 2


def test_ray_engine_reads_a_dataset_split_and_globs(reviews, tiny_run, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    reviews[:20].to_parquet(data / "test-00000-of-00002.parquet")
    reviews[20:].to_parquet(data / "test-00001-of-00002.parquet")
    reviews[:3].to_parquet(data / "train-00000-of-00001.parquet")
    # One actor, then two in the same process: the instance started for one is started again.
    rc = main(["predict", str(tiny_run), "--engine", "ray", "--dataset", str(data), "--split", "test",
               "--id-field", "review_id", "--output", str(tmp_path / "a"), "--device", "cpu", "--concurrency", "1"])
    assert rc == 0, capsys.readouterr().err
    # The output folder reads as one dataset: every shard has the same schema.
    got = pd.read_parquet(tmp_path / "a").sort_values("review_id")
    assert got["review_id"].tolist() == reviews["review_id"].tolist()
    rc = main(["predict", str(tiny_run), "--engine", "ray", "--file", str(data / "test-*.parquet"),
               "--id-field", "review_id", "--output", str(tmp_path / "b"), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert len(pd.read_parquet(tmp_path / "b")) == len(reviews)


def test_more_actors_than_the_running_instance_can_hold_is_not_a_hang():
    """Ray Data's read and write tasks need a CPU beside the actors': an instance started for fewer
    actors by an earlier call is started again with more; one started by the user is left as it
    is, with one line, rather than waited on for ever."""
    import ray

    from sentiment_lora.cluster import start_ray
    from sentiment_lora.errors import UserError

    ray.shutdown()
    start_ray(ray, None, 1)
    start_ray(ray, None, (os.cpu_count() or 1) + 2)  # more than the first start gave: started again
    assert ray.cluster_resources()["CPU"] == (os.cpu_count() or 1) + 3
    ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # the user's own instance
    node = ray.get_runtime_context().get_node_id()
    with pytest.raises(UserError, match="has 1 CPUs, and 2 for the actors plus one"):
        start_ray(ray, None, 2)
    assert ray.is_initialized() and ray.get_runtime_context().get_node_id() == node
    ray.shutdown()


@pytest.mark.parametrize("args, fragment", [
    (["--file", "{src}", "--output", "{tmp}/o", "--id-field", "nope"], "has no column 'nope'"),
    (["--file", "{src}", "--output", "{tmp}/o", "--id-field", "label"], "would be overwritten"),
    (["--file", "{src}", "--output", "{tmp}/full", "--id-field", "review_id"], "exists and is not empty"),
    (["--file", "{tmp}/missing.parquet", "--output", "{tmp}/o"], "not found"),
    (["--file", "{src}"], "needs --output"),
    (["--output", "{tmp}/o"], "needs one of --file"),
    (["--file", "{tmp}/x.txt", "--output", "{tmp}/o"], "cannot tell the input's format"),
    (["--dataset", "{tmp}", "--output", "{tmp}/o"], "has no .parquet, .jsonl or .csv file of split 'test'"),
])
def test_ray_engine_bad_input_is_one_line(args, fragment, reviews, tiny_run, tmp_path, capsys):
    src = tmp_path / "in.parquet"
    reviews.to_parquet(src)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "x.txt").write_text("a review\n")
    argv = [a.format(src=src, tmp=tmp_path) for a in args]
    rc = main(["predict", str(tiny_run), "--engine", "ray", "--device", "cpu", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and fragment in err[0], err


def test_shards_written_on_other_nodes_are_one_line_not_a_crash(reviews, tiny_run, tmp_path, capsys, monkeypatch):
    """On a remote cluster (--address) a local --output is written on the nodes' own disks;
    here that is simulated by a write that leaves nothing on this machine."""
    import ray.data

    src = tmp_path / "in.parquet"
    reviews.to_parquet(src)
    # As Ray does when the driver is here and the workers are not: the folder is made on this
    # machine, and the shards go to the nodes' own disks.
    monkeypatch.setattr(ray.data.Dataset, "write_parquet", lambda self, path, **kw: Path(path).mkdir(exist_ok=True))
    rc = main(["predict", str(tiny_run), "--engine", "ray", "--device", "cpu", "--file", str(src),
               "--id-field", "review_id", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "only 0 of the 37 rows" in err[0] and "every node shares" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_an_input_with_no_rows_is_one_line(kind, reviews, tiny_run, tmp_path, capsys, monkeypatch):
    """Said before any actor loads the classifier, which would be its time and memory for nothing."""
    from sentiment_lora import cluster

    src = tmp_path / f"in.{kind}"
    getattr(reviews.iloc[:0], f"to_{kind}")(src, index=False)
    monkeypatch.setattr(cluster, "Scorer", None)  # an actor started would fail on it
    rc = main(["predict", str(tiny_run), "--engine", "ray", "--device", "cpu", "--file", str(src),
               "--id-field", "review_id", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "has no rows" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]
