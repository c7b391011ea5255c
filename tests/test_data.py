import json

import numpy as np
import pandas as pd
import pytest

from sentiment_lora.config import DataConfig
from sentiment_lora.data import balanced_indices, clean_text, load_splits, looks_local, prepare_data
from sentiment_lora.errors import UserError

WORDS = ["Negative", "Positive"]


def cfg(path, **kw):
    base = dict(dataset=str(path), train_size=40, val_size=10, test_size=20)
    return DataConfig(**{**base, **kw})


def test_balanced_seeded_sample_is_not_the_first_rows(tiny_data_dir):
    a = prepare_data(cfg(tiny_data_dir), WORDS)
    b = prepare_data(cfg(tiny_data_dir), WORDS)
    assert a.train.ids == b.train.ids and a.test.ids == b.test.ids  # seeded
    assert a.train.labels.count(0) == a.train.labels.count(1) == 20
    assert a.val.labels.count(0) == a.val.labels.count(1) == 5
    assert a.test.labels.count(0) == a.test.labels.count(1) == 10
    # The data is sorted by label: the first 40 rows would all be negative.
    assert a.train.ids != [f"train:{i}" for i in range(40)]
    c = prepare_data(cfg(tiny_data_dir, seed=7), WORDS)
    assert c.train.ids != a.train.ids


def test_validation_comes_from_train_and_is_disjoint(tiny_data_dir):
    d = prepare_data(cfg(tiny_data_dir), WORDS)
    assert all(i.startswith("train:") for i in d.val.ids)
    assert not set(d.val.ids) & set(d.train.ids)
    assert all(i.startswith("test:") for i in d.test.ids)


def test_duplicates_counted_and_test_leak_dropped(tiny_data_dir):
    d = prepare_data(cfg(tiny_data_dir, train_size=None, test_size=None, val_size=0), WORDS)
    assert d.stats["duplicates_in_train"] == 1
    assert d.stats["test_rows_in_train_dropped"] == 1
    assert "test:0" not in d.test.ids
    assert "train:5" not in d.train.ids  # the second copy of a duplicate is never sampled
    assert len(d.train) == 119 and len(d.test) == 59
    assert not set(d.train.texts) & set(d.test.texts)


def test_html_breaks_are_cleaned(tiny_data_dir):
    d = prepare_data(cfg(tiny_data_dir, train_size=None, test_size=None, val_size=0), WORDS)
    text = d.train.texts[d.train.ids.index("train:3")]
    assert "<br" not in text and "Still, the end." in text
    assert clean_text("a<br /><br/>b<BR>c") == "a b c"
    assert clean_text("a<br />b", clean_html=False) == "a<br />b"


def test_sample_larger_than_a_class_fails(tiny_data_dir):
    with pytest.raises(UserError, match="only"):
        prepare_data(cfg(tiny_data_dir, train_size=1000), WORDS)


def test_balanced_indices_odd_sizes():
    labels = [0] * 10 + [1] * 10 + [2] * 10
    idx = balanced_indices(labels, 8, 3, np.random.default_rng(0))
    counts = np.bincount([labels[i] for i in idx], minlength=3)
    assert sorted(counts.tolist()) == [2, 3, 3] and len(set(idx)) == 8


def test_csv_and_jsonl_folders_and_string_labels(tmp_path):
    rows = [{"review": f"text number {i}", "sentiment": "pos" if i % 2 else "neg"} for i in range(20)]
    (tmp_path / "csv").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "csv" / "train.csv", index=False)
    pd.DataFrame(rows).to_csv(tmp_path / "csv" / "test.csv", index=False)
    c = DataConfig(dataset=str(tmp_path / "csv"), text_column="review", label_column="sentiment",
                   label_values=["neg", "pos"], train_size=10, test_size=None)
    d = prepare_data(c, WORDS)
    assert sorted(set(d.train.labels)) == [0, 1] and len(d.test) == 0  # every test text is also in train
    (tmp_path / "jsonl").mkdir()
    for split in ("train", "test"):
        with open(tmp_path / "jsonl" / f"{split}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({"text": r["review"] + split, "label": "Positive" if r["sentiment"] == "pos"
                                    else "negative"}) + "\n")
    d = prepare_data(DataConfig(dataset=str(tmp_path / "jsonl"), train_size=10, test_size=10), WORDS)
    assert d.train.labels.count(1) == 5


def test_aclimdb_folder(tmp_path):
    for split in ("train", "test"):
        for sub, word in (("pos", "good"), ("neg", "bad")):
            (tmp_path / split / sub).mkdir(parents=True)
            for i in range(4):
                (tmp_path / split / sub / f"{i}_7.txt").write_text(f"{word} {split} {i}<br />end")
    d = prepare_data(DataConfig(dataset=str(tmp_path), train_size=4, test_size=None), WORDS)
    assert len(d.train) == 4 and len(d.test) == 8
    assert all(("good" in t) == (y == 1) for t, y in zip(d.test.texts, d.test.labels))
    assert all("<br" not in t for t in d.test.texts)


@pytest.mark.parametrize("change, fragment", [
    ({"dataset": "/no/such/folder"}, "not found"),
    ({"text_column": "body"}, "no column 'body'"),
    ({"test_split": "validation"}, "no split 'validation'"),
])
def test_bad_dataset_settings(tiny_data_dir, change, fragment):
    with pytest.raises(UserError, match=fragment):
        prepare_data(cfg(tiny_data_dir, **change), WORDS)


def test_labels_outside_the_set_and_empty_texts(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 2]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"text": ["d", "e"], "label": [0, 1]}).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(UserError, match="label 2 is outside the label set"):
        prepare_data(DataConfig(dataset=str(tmp_path), train_size=None, test_size=None), WORDS)
    pd.DataFrame({"text": ["a", "  ", "c"], "label": [0, 1, 1]}).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(UserError, match="row 1 has an empty"):
        prepare_data(DataConfig(dataset=str(tmp_path), train_size=None, test_size=None), WORDS)


def test_unreadable_and_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no parquet"):
        load_splits(DataConfig(dataset=str(tmp_path / "empty")), ["train"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="could not load dataset"):
        load_splits(DataConfig(dataset=str(tmp_path / "broken")), ["train"])


def test_paths_and_hub_ids_are_told_apart():
    assert not looks_local("imdb") and not looks_local("stanfordnlp/imdb")
    assert looks_local("./imdb") and looks_local("../shared/imdb") and looks_local("/data/imdb")
    assert looks_local("data/sets/imdb")


def _unbalanced(folder, seed=0):
    """Three classes in proportions 6 : 3 : 1, with a validation split of their own."""
    import random

    import pandas as pd

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 200), ("validation", 50), ("test", 100)):
        labels = [0] * (6 * n // 10) + [1] * (3 * n // 10) + [2] * (n // 10)
        rows = [(f"{split} review {i} {rng.random():.6f}", y) for i, y in enumerate(labels)]
        pd.DataFrame(rows, columns=["text", "label"]).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    return folder


def test_stratified_balanced_and_all_sampling(tmp_path):
    from collections import Counter

    from sentiment_lora.config import DataConfig
    from sentiment_lora.data import prepare_data

    data = _unbalanced(tmp_path / "d")
    words = ["bad", "meh", "good"]
    strat = prepare_data(DataConfig(dataset=str(data), sampling="stratified", train_size=100, test_size=50), words)
    assert Counter(strat.train.labels) == {0: 60, 1: 30, 2: 10} and Counter(strat.test.labels) == {0: 30, 1: 15, 2: 5}
    bal = prepare_data(DataConfig(dataset=str(data), train_size=30, test_size=15), words)
    assert Counter(bal.train.labels) == {0: 10, 1: 10, 2: 10}
    with pytest.raises(UserError, match="only 20 are available"):
        prepare_data(DataConfig(dataset=str(data), train_size=90, test_size=15), words)
    every = prepare_data(DataConfig(dataset=str(data), sampling="all", val_size=20), words)
    assert len(every.train) == 180 and len(every.val) == 20 and len(every.test) == 100
    assert not set(every.train.ids) & set(every.val.ids)


def test_the_datasets_own_validation_split(tmp_path):
    from sentiment_lora.config import DataConfig
    from sentiment_lora.data import prepare_data

    data = _unbalanced(tmp_path / "d")
    words = ["bad", "meh", "good"]
    b = prepare_data(DataConfig(dataset=str(data), val_split="validation", sampling="stratified", train_size=None,
                                test_size=None), words)
    assert len(b.val) == 50 and all(i.startswith("validation:") for i in b.val.ids) and len(b.train) == 200
    assert b.stats["val_from"] == "validation"
    b = prepare_data(DataConfig(dataset=str(data), val_split="validation", val_size=10, sampling="stratified",
                                train_size=None, test_size=None), words)
    assert len(b.val) == 10
    with pytest.raises(UserError, match="has no split 'dev'"):
        prepare_data(DataConfig(dataset=str(data), val_split="dev"), words)
