import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sentiment_lora.perf import forward_flops_per_token, peak_memory_mb, reset_peak_memory, sequence_flops
from sentiment_lora.train import step_batches

ROOT = Path(__file__).resolve().parents[1]


def test_step_batches_sort_each_step_and_cover_every_review():
    lengths = [5, 40, 12, 33, 7, 25, 18, 3, 29, 11]
    stream = step_batches(lengths, batch_size=2, grad_accum=2, seed=1)
    seen = []
    for _ in range(3):  # ceil(10 / 4) steps make one epoch
        epoch, micros = next(stream)
        assert epoch == 0
        flat = [i for m in micros for i in m]
        assert [lengths[i] for i in flat] == sorted((lengths[i] for i in flat), reverse=True)
        assert all(len(m) <= 2 for m in micros)
        seen += flat
    assert sorted(seen) == list(range(10))
    assert next(stream)[0] == 1
    again = step_batches(lengths, batch_size=2, grad_accum=2, seed=1)
    assert next(again) == next(step_batches(lengths, batch_size=2, grad_accum=2, seed=1))


def test_step_batches_split_a_step_between_processes():
    lengths = list(range(16))
    parts = [next(step_batches(lengths, 2, 2, seed=0, world=2, rank=r))[1] for r in (0, 1)]
    flat = [i for p in parts for m in p for i in m]
    first_step = torch.randperm(16, generator=torch.Generator().manual_seed(0)).tolist()[:8]
    assert sorted(flat) == sorted(first_step)  # the two processes share the step, no overlap
    assert all(len(p) == 2 and all(len(m) == 2 for m in p) for p in parts)


def test_flops_count_the_block_matmuls(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if "layers" in n and p.dim() == 2)
    assert forward_flops_per_token(config, 0) == 2 * matmul_params
    attention = 2 * config.num_hidden_layers * config.hidden_size * 10
    assert forward_flops_per_token(config, 10) == 2 * matmul_params + attention
    assert sequence_flops(config, [10, 10], backward=True) == 2 * 2 * 10 * (2 * matmul_params + attention)


def test_peak_memory_window_sees_a_new_allocation():
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    before = peak_memory_mb(cpu)
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert peak_memory_mb(cpu) >= before + 50
    del block


@pytest.mark.filterwarnings("ignore")
def test_speed_benchmark_runs_in_tiny_mode(tiny_config, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "benchmarks" / "bench_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    preset = tmp_path / "tiny.yaml"
    tiny_config("train.batch_size=2", "train.grad_accum=8", "eval.batch_size=4").save(preset)
    out = tmp_path / "speed.json"
    assert bench.main(["--config", str(preset), "--steps", "1", "--repeats", "2", "--score-reviews", "12",
                       "--output", str(out)]) == 0
    r = json.loads(out.read_text())
    # Same model, same inputs: the two scorers must agree; speed is measured, never asserted.
    assert r["agreement"] >= 0.995
    assert r["max_prob_diff"] < 1e-4
    for key in ("train_tokens_per_s", "score_reviews_per_s"):
        assert r[key]["ours"] > 0 and r[key]["seed"] > 0
        assert r[key]["ratio"] == pytest.approx(r[key]["ours"] / r[key]["seed"], rel=0.01)
    assert r["peak_mem_mb"]["train"]["ours"] > 0 and r["matmul_flops"]["value"] > 0
    assert r["score_reviews"] == 12 and r["device"]
