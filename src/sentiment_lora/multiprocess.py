"""What several training processes (``accelerate launch``, ``torchrun``) agree on: rows split
across them and gathered, and numbers every process must see the same (a mean loss, a stop).

With one process every function is a plain pass-through.
"""

from __future__ import annotations

import numpy as np


def shared_score(accelerator, n: int, scorer, progress: str | None = None) -> np.ndarray:
    """``scorer(indices, progress)`` over rows 0..n-1, split across the run's processes (every
    world-th row each) and gathered, in row order, on every process. Each row is scored
    exactly once, whether or not n divides by the number of processes."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if world == 1:
        return scorer(list(range(n)), progress)
    mine = list(range(rank, n, world))
    parts = gathered(accelerator, [(mine, scorer(mine, progress if accelerator.is_main_process else None))])
    rows = [i for idx, _ in parts for i in idx]
    if sorted(rows) != list(range(n)):
        raise RuntimeError(f"gathered {len(rows)} scored rows for {n}: a process scored the wrong shard")
    out = None
    for idx, probs in parts:
        out = np.zeros((n, probs.shape[1]), dtype=probs.dtype) if out is None else out
        out[idx] = probs
    return out


def gathered(accelerator, items: list) -> list:
    """Every process's ``items``, concatenated in process order, on every process."""
    if accelerator.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def agreed(accelerator, value: float, how: str) -> float:
    """The same number on every process: the ``mean`` of their values (losses) or the ``max``
    (a stop request, a failed save). All-reduce rather than Accelerate's reduce, whose max is recent."""
    world = accelerator.num_processes
    if world == 1:
        return value
    import torch
    import torch.distributed as dist

    x = torch.tensor(value, dtype=torch.float64, device=accelerator.device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX if how == "max" else dist.ReduceOp.SUM)
    return float(x) / (world if how == "mean" else 1)


def release(accelerator) -> None:
    """Close this process's process group (a no-op with one process, or twice)."""
    if accelerator.num_processes > 1:
        accelerator.state.destroy_process_group()
