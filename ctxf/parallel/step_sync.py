"""One reduction per step: the step's metrics, the stop request and the finite check of every rank."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def reduce_step(metrics: dict[str, float], stop_requested: bool) -> tuple[dict[str, float], bool]:
    """Mean of each metric over all ranks, and whether any rank asked to stop (one all-reduce;
    every rank must pass the same metric names)."""
    names = sorted(metrics)
    values = torch.tensor([float(metrics[n]) for n in names] + [1.0 if stop_requested else 0.0],
                          dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(values)
        values[:-1] /= dist.get_world_size()
    return dict(zip(names, values[:-1].tolist())), bool(values[-1] > 0)


def max_over_ranks(values: list[int]) -> list[int]:
    """Element-wise maximum of `values` over all ranks (one all-reduce; every rank passes as many)."""
    if not dist.is_initialized() or not values:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def nonfinite_ranks(value: float) -> list[tuple[int, float]]:
    """(rank, value) of every rank whose `value` is NaN or infinite (a collective)."""
    local = torch.tensor([value], dtype=torch.float64)
    if not dist.is_initialized():
        return [] if math.isfinite(value) else [(0, value)]
    gathered = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [(rank, float(t)) for rank, t in enumerate(gathered) if not math.isfinite(float(t))]


def broadcast_text(text: str | None, source: int = 0) -> str | None:
    """`source`'s string on every rank."""
    if not dist.is_initialized():
        return text
    holder = [text]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
