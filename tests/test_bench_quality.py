"""benchmarks/bench_quality.py: each LLM row of the results says the precision it was scored in and
the calibration that set its labels, so a figure that moves between machines can be traced."""

from __future__ import annotations

import json

from conftest import load_benchmark


def _metrics(accuracy: float, **extra) -> dict:
    return {"accuracy": accuracy, "accuracy_ci95": [accuracy - 0.01, accuracy + 0.01], "n": 2000, "ece": 0.02,
            "roc_auc": 0.97, "wall_seconds": 600.0, **extra}


def test_llm_rows_record_their_precision_and_calibration(tmp_path):
    bench = load_benchmark("bench_quality")
    stack = {"test": {name: {"accuracy": a, "accuracy_ci95": [a - 0.01, a + 0.01], "n": 2000}
                      for name, a in (("stack", 0.93), ("llm", 0.92), ("baseline", 0.91))},
             "val": {}, "combiner": {"C": 1.0}, "wall_seconds": 60.0, "baseline": "tfidf-nb", "pool": "all",
             "baseline_train_rows": 24798}
    rows = {"best_recipe": _metrics(0.92, precision="bf16", calibration={"method": "temperature"}, stack=stack),
            "zero_shot": _metrics(0.83)}
    for name, m in rows.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    result = bench.summary(tmp_path)
    assert result["best_recipe"]["precision"] == "bf16"
    assert result["best_recipe"]["calibration"] == "temperature"
    assert result["hybrid"]["llm_scored_as"] == {"precision": "bf16", "calibration": "temperature"}
    assert "precision" not in result["zero_shot"]  # the zero-shot baseline records none: nothing is invented
    table = bench.markdown(result)
    assert "best recipe (configs/smollm2-best.yaml) [bf16, temperature]" in table
    assert "stacked with a bag-of-words model (configs/smollm2-hybrid.yaml) [bf16, temperature]" in table


def test_a_hybrid_measured_by_the_best_recipe_run_counts_as_measured(tmp_path):
    """Else every rerun 'ran' the hybrid in no time and wrote that over the whole run's minutes."""
    bench = load_benchmark("bench_quality")
    assert not bench.measured(tmp_path, "hybrid")
    (tmp_path / "best_recipe").mkdir()
    (tmp_path / "best_recipe" / "metrics.json").write_text(json.dumps(_metrics(0.92)))
    assert bench.measured(tmp_path, "best_recipe") and not bench.measured(tmp_path, "hybrid")
    stacked = {**_metrics(0.92), "stack": {"test": {}}}
    (tmp_path / "best_recipe" / "metrics.json").write_text(json.dumps(stacked))
    assert bench.measured(tmp_path, "hybrid")
