"""Differentiable collectives over a process group, for sequence-sharded attention tensors.

- `sequence_to_heads` / `heads_to_sequence`: the Ulysses all-to-all. Each rank holds a
  contiguous sequence shard with all heads; afterwards it holds the whole (group's) sequence
  for 1/P of the heads, and back. Each is the other's backward.
- `gather_sequence`: all-gather of sequence shards; its backward sums the gradient of every
  rank's copy and hands each rank its shard (reduce-scatter), so when every rank of the group
  computes the same loss from the gathered tensor, the group's gradients add up to P times the
  sample's gradient (see engines.py for how DeepSpeed's averaging turns that into the mean).
- `ring_shift`: send tensors to the next rank of a ring and receive the previous rank's; its
  backward sends gradients the other way.

gloo's all-to-all needs equal splits: the head count must divide by the group size (the plan
checks it) and the sequence shards must have equal length (the sharding pads them).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from einops import rearrange

Group = dist.ProcessGroup

# torch 2.13 renamed the tensor-in, tensor-out collectives; older releases have only the old names
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _all_to_all(chunks: torch.Tensor, group: Group) -> torch.Tensor:
    """Rank r sends chunks[j] to rank j and receives rank j's chunks[r] into out[j]."""
    chunks = chunks.contiguous()
    out = torch.empty_like(chunks)
    dist.all_to_all_single(out, chunks, group=group)
    return out


def _sequence_to_heads(x: torch.Tensor, group: Group) -> torch.Tensor:
    size = dist.get_world_size(group)
    # x is this rank's sequence shard [B, S/P, H, D]; head group j goes to rank j
    chunks = rearrange(x, "b s (p h) d -> p b s h d", p=size)
    received = _all_to_all(chunks, group)
    # chunk j came from rank j, so it is sequence shard j of this rank's head group: [B, S, H/P, D]
    return rearrange(received, "p b s h d -> b (p s) h d")


def _heads_to_sequence(x: torch.Tensor, group: Group) -> torch.Tensor:
    size = dist.get_world_size(group)
    # x is this rank's head group over the whole sequence [B, S, H/P, D]; sequence shard j goes to rank j
    chunks = rearrange(x, "b (p s) h d -> p b s h d", p=size)
    received = _all_to_all(chunks, group)
    # chunk j came from rank j, so it is head group j of this rank's sequence shard: [B, S/P, H, D]
    return rearrange(received, "p b s h d -> b s (p h) d")


class _SequenceToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return _sequence_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _heads_to_sequence(grad, ctx.group), None


class _HeadsToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return _heads_to_sequence(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _sequence_to_heads(grad, ctx.group), None


def sequence_to_heads(x: torch.Tensor, group: Group) -> torch.Tensor:
    """`[B, S/P, H, D]` sequence shard -> `[B, S, H/P, D]` head shard (S = P x the shard length)."""
    size = dist.get_world_size(group)
    if x.shape[2] % size:
        raise ValueError(f"{x.shape[2]} heads do not split over {size} ranks; the Ulysses degree must divide heads")
    return _SequenceToHeads.apply(x, group)


def heads_to_sequence(x: torch.Tensor, group: Group) -> torch.Tensor:
    """`[B, S, H/P, D]` head shard -> `[B, S/P, H, D]` sequence shard."""
    size = dist.get_world_size(group)
    if x.shape[1] % size:
        raise ValueError(f"sequence of {x.shape[1]} does not split over {size} ranks; pad it to a multiple")
    return _HeadsToSequence.apply(x, group)


def all_gather_sequence(x: torch.Tensor, group: Group, dim: int = 1) -> torch.Tensor:
    """Concatenate every rank's `x` along `dim`, in rank order (no autograd)."""
    size = dist.get_world_size(group)
    moved = x.movedim(dim, 0).contiguous()
    out = torch.empty((size * moved.shape[0], *moved.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather_single(out, moved, group=group)
    return out.movedim(0, dim)


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        return all_gather_sequence(x, group, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        size = dist.get_world_size(ctx.group)
        moved = grad.movedim(ctx.dim, 0).contiguous()
        shard = torch.empty((moved.shape[0] // size, *moved.shape[1:]), dtype=grad.dtype, device=grad.device)
        _reduce_scatter_single(shard, moved, op=dist.ReduceOp.SUM, group=ctx.group)
        return shard.movedim(0, ctx.dim), None, None


def gather_sequence(x: torch.Tensor, group: Group, dim: int = 1) -> torch.Tensor:
    """Differentiable all-gather along `dim`; backward reduce-scatters (sums) the gradient."""
    return _GatherSequence.apply(x, group, dim)


def _exchange(tensors: list[torch.Tensor], group: Group, send_to: int, recv_from: int) -> list[torch.Tensor]:
    tensors = [t.contiguous() for t in tensors]
    received = [torch.empty_like(t) for t in tensors]
    ops = []
    for tensor, out in zip(tensors, received):
        ops.append(dist.P2POp(dist.isend, tensor, dist.get_global_rank(group, send_to), group))
        ops.append(dist.P2POp(dist.irecv, out, dist.get_global_rank(group, recv_from), group))
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _RingShift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, group: Group, *tensors: torch.Tensor):
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        ctx.group, ctx.next, ctx.prev = group, (rank + 1) % size, (rank - 1) % size
        ctx.needs = [t.requires_grad for t in tensors]
        received = _exchange(list(tensors), group, send_to=ctx.next, recv_from=ctx.prev)
        ctx.mark_non_differentiable(*(out for out, need in zip(received, ctx.needs) if not need))
        return tuple(received)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        moving = [grad for grad, need in zip(grads, ctx.needs) if need]
        returned = iter(_exchange(moving, ctx.group, send_to=ctx.prev, recv_from=ctx.next) if moving else [])
        return (None, *(next(returned) if need else None for need in ctx.needs))


def ring_shift(tensors: list[torch.Tensor], group: Group) -> list[torch.Tensor]:
    """Every rank sends `tensors` to the next rank of `group` and returns the previous rank's."""
    return list(_RingShift.apply(group, *tensors))
