"""benchmarks/bench_precision.py on each kind of processor: it scores only the precisions the
processor has units for, chooses its measured default among those, and never writes one kind's
figures over another's."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_benchmark
from sentiment_lora.precision import parse_cpuinfo

CPUINFO = Path(__file__).parent / "cpuinfo"
UNITS = {"amx": ("fp32", "bf16", "int8"), "avx512_bf16": ("fp32", "bf16", "int8"), "vnni": ("fp32", "int8"),
         "plain": ("fp32",)}


def _row(speed: float, accuracy: float, agreement: float | None = None) -> dict:
    row = {"reviews_per_s": speed, "accuracy": accuracy}
    return row if agreement is None else {**row, "agreement": agreement}


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_only_the_units_a_processor_has_are_measured(kind):
    cpu = parse_cpuinfo((CPUINFO / f"{kind}.txt").read_text())
    assert tuple(p for p in load_benchmark("bench_precision").VARIANTS if cpu.has_units(p)) == UNITS[kind]


def test_the_default_is_fp32_where_only_fp32_was_scored():
    bench = load_benchmark("bench_precision")
    result = {"scoring": {"fp32": _row(8.0, 0.87), "onnx-int8": _row(14.0, 0.80, 0.85)},
              "training": {"fp32": {"tokens_per_s": 200.0, "accuracy": 0.86, "ci95": [0.83, 0.89]}}}
    assert bench.measured_defaults(result) == {"scoring": "fp32", "training": "fp32"}


def test_the_fastest_precision_that_holds_accuracy_and_agreement_is_chosen():
    bench = load_benchmark("bench_precision")
    scoring = {"fp32": _row(8.0, 0.870), "bf16": _row(22.0, 0.874, 0.998), "int8": _row(30.0, 0.869, 0.98)}
    assert bench.measured_defaults({"scoring": scoring}) == {"scoring": "bf16"}
    scoring["int8"]["agreement"] = 0.995
    assert bench.measured_defaults({"scoring": scoring}) == {"scoring": "int8"}


def test_each_kind_writes_its_own_results_file():
    bench = load_benchmark("bench_precision")
    assert bench.default_out("amx").name == "precision-cpu.json"
    names = {bench.default_out(kind).name for kind in UNITS}
    assert len(names) == len(UNITS) and all(n.startswith("precision-cpu") for n in names)


def test_each_timed_round_records_the_share_of_cpu_time_the_hypervisor_took():
    import numpy as np

    class Scorer:
        def proba_of_prompts(self, ids):
            return np.full((len(ids), 2), 0.5)

    bench = load_benchmark("bench_precision")
    out = bench.timed({"fp32": Scorer(), "bf16": Scorer()}, [[1, 2]] * 8, [[1, 2]] * 4, rounds=3)
    for speeds, probs, seconds, stolen in out.values():
        assert len(speeds) == len(stolen) == 3 and probs.shape == (4, 2) and seconds >= 0
        assert all(s is None or 0 <= s <= 1 for s in stolen)
