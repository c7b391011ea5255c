"""Measuring speed honestly: peak memory per phase, model FLOPs, and the machine's matmul limit."""

from __future__ import annotations

import ctypes
import gc
import resource
import time
from contextlib import suppress
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window, so a phase's peak is not the model loading's."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # glibc keeps freed memory mapped: untrimmed, a phase's peak would start at the previous high-water mark.
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with suppress(OSError):  # Linux: "5" resets peak RSS (VmHWM) to the current RSS; elsewhere the peak stays
        _CLEAR_REFS.write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak since the last reset: allocated GPU memory on CUDA, resident set size otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with suppress(OSError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def forward_flops_per_token(config, length: float) -> float:
    """Forward FLOPs per real token of a decoder at sequence length ``length``: 2 x the block matmuls'
    parameters (no embedding or LM head: a classifier needs the head at one position only), plus causal
    attention's QK^T and AV, 2 x layers x attention width x length per token on average. Every side of a
    comparison gets this formula, so wasted work (padding, logits nobody reads) is not counted as useful."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q_width = cfg.num_attention_heads * head_dim
    kv_width = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * head_dim
    attn_params = d * q_width * 2 + d * kv_width * 2  # q, o and k, v projections
    mlp_params = 3 * d * cfg.intermediate_size  # gate, up, down
    return 2.0 * layers * (attn_params + mlp_params) + 2.0 * layers * q_width * length


def sequence_flops(config, lengths: list[int], backward: bool = False) -> float:
    """Useful model FLOPs for a set of sequences. With ``backward``, LoRA training: the frozen
    weights need only the gradient of their input, about one more forward's worth."""
    total = sum(n * forward_flops_per_token(config, n) for n in lengths)
    return 2.0 * total if backward else total


def matmul_flops(device: torch.device, seconds: float = 2.0) -> tuple[float, str]:
    """The machine's dense matmul limit now: best square matmul FLOP/s (CPU fp32, GPU bf16) and the dtype."""
    cuda = device.type == "cuda"
    dtype, sizes, reps = (torch.bfloat16, (8192,), 10) if cuda else (torch.float32, (1024, 2048, 4096), 1)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        _sync(device)
        deadline = time.perf_counter() + seconds / len(sizes)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            _sync(device)
            best = max(best, reps * 2 * n**3 / (time.perf_counter() - start))
        del a, b
    return best, str(dtype).removeprefix("torch.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
