"""The few-shot benchmark in its tiny mode, through its ``main()``: the JSON's shape, and every
method given the very same training texts for each (n, seed)."""

from __future__ import annotations

import json

import pytest

from conftest import load_benchmark


def test_the_tiny_curve(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    pytest.importorskip("setfit", reason="the bench extra: pip install -e '.[bench]'")
    bench = load_benchmark("bench_fewshot")
    given = {}
    for method in bench.METHODS:  # record what each method is handed, not only what it reports
        real = getattr(bench.Runner, method)

        def spy(self, n, seed, train, _real=real, _method=method):
            given[(_method, n, seed)] = (list(train.texts), list(train.labels))
            return _real(self, n, seed, train)

        monkeypatch.setattr(bench.Runner, method, spy)
    out, png = tmp_path / "fewshot.json", tmp_path / "fewshot.png"
    rc = bench.main(["--dataset", str(tiny_data_dir), "--n", "4", "6", "--seeds-small", "2", "--test-size", "20",
                     "--model", str(tiny_model_dir), "--gguf-file", "", "--setfit-max-steps", "2",
                     "--lora-set", "prompt.max_length=40", "--lora-set", "train.epochs=1",
                     "--work-dir", str(tmp_path / "work"), "--output", str(out), "--plot", str(png)])
    assert rc == 0 and png.stat().st_size > 1000
    result = json.loads(out.read_text())
    assert result["n_test"] == 20
    runs = result["runs"]
    assert {(r["n_per_class"], r["seed"]) for r in runs} == {(4, 1), (4, 2), (6, 1)}
    assert {r["method"] for r in runs} == set(bench.METHODS) and len(runs) == 3 * len(bench.METHODS)
    for r in runs:
        assert set(r) >= {"method", "n_per_class", "seed", "accuracy", "ci95", "minutes"}
        assert 0 <= r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] <= 1 and r["minutes"] >= 0
    for n, seed in {(4, 1), (4, 2), (6, 1)}:
        samples = {given[(m, n, seed)][0].__repr__() for m in bench.METHODS}
        assert len(samples) == 1, f"methods saw different training texts at n={n} seed={seed}"
        texts, labels = given[("lora", n, seed)]
        assert len(texts) == 2 * n and sorted(labels) == [0] * n + [1] * n
        assert len({r["train_sha256"] for r in runs if (r["n_per_class"], r["seed"]) == (n, seed)}) == 1
    assert given[("tfidf", 4, 1)][0] != given[("tfidf", 4, 2)][0]  # the seeds draw different reviews
    # SetFit at the library's defaults: num_iterations unset, every pair drawn by oversampling.
    for r in (r for r in runs if r["method"] == "setfit"):
        n = r["n_per_class"]
        assert r["setfit"] == {"num_iterations": None, "sampling_strategy": "oversampling",
                               "pairs": 2 * n * (n + 1), "max_steps": 2}
        assert r["cpu"]["model"]
    # Resuming with other SetFit settings reruns SetFit only, and keeps its earlier run aside.
    rc = bench.main(["--dataset", str(tiny_data_dir), "--n", "4", "--seeds-small", "1", "--test-size", "20",
                     "--methods", "setfit", "--setfit-num-iterations", "1", "--setfit-max-steps", "2", "--resume",
                     "--work-dir", str(tmp_path / "work"), "--output", str(out), "--plot", ""])
    again = json.loads(out.read_text())
    assert rc == 0 and len(again["runs"]) == len(runs)
    assert [(r["n_per_class"], r["seed"], r["setfit"]["num_iterations"]) for r in again["superseded"]] == [(4, 1, None)]
    redone = [r for r in again["runs"] if r["method"] == "setfit" and (r["n_per_class"], r["seed"]) == (4, 1)]
    assert [r["setfit"]["pairs"] for r in redone] == [2 * 1 * 8]
    assert [r for r in again["runs"] if r["method"] != "setfit"] == [r for r in runs if r["method"] != "setfit"]
