"""Ulysses all-to-all and context-parallel attention against single-process attention (gloo).

Every rank computes the single-process oracle on the whole sequence itself (plain SDPA, no
sharding) and compares the sharded result, gathered, with it: outputs and dq, dk, dv.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from gloo_workers import run_workers

from ctxf.config import load_config
from ctxf.models.attention import BlockMask, sdpa_attention
from ctxf.parallel.attention import ContextParallelAttention
from ctxf.parallel.collectives import all_gather_sequence, heads_to_sequence, sequence_to_heads
from ctxf.parallel.plan import plan
from ctxf.parallel.sharding import SequenceShard
from ctxf.parallel.topology import Topology

NUM_HEADS, HEAD_DIM, BATCH = 4, 8, 2


def _topology(cp: int, ulysses: int, heads: int = NUM_HEADS) -> Topology:
    world = dist.get_world_size()
    config = load_config("tiny", [f"model.num_heads={heads}", f"model.head_dim={HEAD_DIM}",
                                  f"parallel.context_parallel_degree={cp}", f"parallel.ulysses_degree={ulysses}",
                                  f"train.global_batch_size={world // cp}"])
    return Topology(plan(world, config))


def _encoded(batch: int, positions: torch.Tensor, heads: torch.Tensor, dim: int) -> torch.Tensor:
    """[B, len(positions), len(heads), dim] whose value spells out (batch, position, head, channel)."""
    b = torch.arange(batch, dtype=torch.float64)[:, None, None, None]
    s = positions.to(torch.float64)[None, :, None, None]
    h = heads.to(torch.float64)[None, None, :, None]
    d = torch.arange(dim, dtype=torch.float64)[None, None, None, :]
    return b * 1e6 + s * 1e3 + h * 10 + d


def check_all_to_all_round_trip(shard_length: int) -> bool:
    group, rank, size = dist.group.WORLD, dist.get_rank(), dist.get_world_size()
    heads, dim = 2 * size, 3
    local_positions = torch.arange(rank * shard_length, (rank + 1) * shard_length)
    x = _encoded(BATCH, local_positions, torch.arange(heads), dim).requires_grad_()

    by_heads = sequence_to_heads(x, group)
    own_heads = torch.arange(rank * heads // size, (rank + 1) * heads // size)
    expected = _encoded(BATCH, torch.arange(size * shard_length), own_heads, dim)
    assert torch.equal(by_heads, expected), "sequence_to_heads put an element in the wrong place"
    assert torch.equal(heads_to_sequence(by_heads, group), x), "heads_to_sequence did not invert it"

    # the backward of the all-to-all is the reverse all-to-all: a gradient that spells out
    # (batch, position, head) in head layout must land at the same place in sequence layout
    (grad,) = torch.autograd.grad(by_heads, x, grad_outputs=expected * 2)
    assert torch.equal(grad, x.detach() * 2), "the backward of sequence_to_heads misplaced a gradient"
    return True


@pytest.mark.parametrize("world_size", [2, 4])
def test_all_to_all_round_trip_places_every_element(world_size):
    assert all(run_workers(world_size, check_all_to_all_round_trip, 3))


def _inputs(seq_len: int, num_memory: int, causal: bool, heads: int = NUM_HEADS):
    generator = torch.Generator().manual_seed(seq_len * 7 + num_memory)
    shape = (BATCH, seq_len, heads, HEAD_DIM)
    q, k, v, grad_out = (torch.randn(shape, generator=generator) for _ in range(4))
    memory = [torch.randn(BATCH, num_memory, heads, HEAD_DIM, generator=generator) for _ in range(2)]
    blocks = torch.arange(seq_len) // 3 if causal else torch.zeros(seq_len, dtype=torch.long)
    return q, k, v, memory, blocks, grad_out


def _single_process(q, k, v, memory, blocks, grad_out):
    """Oracle: one SDPA call over [memory | whole sequence] in this process."""
    q, k, v, k_mem, v_mem = (t.clone().requires_grad_() for t in (q, k, v, *memory))
    mask = BlockMask(blocks, torch.cat([torch.full((k_mem.shape[1],), -1), blocks]))
    out = sdpa_attention(q, torch.cat([k_mem, k], dim=1), torch.cat([v_mem, v], dim=1), mask)
    out.backward(grad_out)
    return out.detach(), [q.grad, k.grad, v.grad, k_mem.grad, v_mem.grad]


def _sharded(attention, topology, q, k, v, memory, blocks, grad_out):
    """The same attention with the sequence sharded over this rank's context-parallel group."""
    cp = topology.context_parallel
    shard = SequenceShard.of(q.shape[1], cp.degree, cp.rank)
    q_l, k_l, v_l = (shard.take(t).clone().requires_grad_() for t in (q, k, v))
    k_mem, v_mem = (t.clone().requires_grad_() for t in memory)
    # padded queries are dropped when shards are gathered, so they receive no gradient
    grad_l = shard.take(grad_out).masked_fill(shard.padding()[None, :, None, None], 0.0)
    local_blocks = shard.block_ids(blocks)
    mask = BlockMask(local_blocks, torch.cat([torch.full((k_mem.shape[1],), -1), local_blocks]))
    out_l = attention(q_l, torch.cat([k_mem, k_l], dim=1), torch.cat([v_mem, v_l], dim=1), mask)
    out_l.backward(grad_l)

    def gathered(t):
        return all_gather_sequence(t, cp.group, dim=1).narrow(1, 0, shard.length)

    memory_grads = [k_mem.grad.clone(), v_mem.grad.clone()]
    for grad in memory_grads:
        dist.all_reduce(grad, group=cp.group)  # each rank's queries contribute to the shared memory keys
    return gathered(out_l.detach()), [gathered(q_l.grad), gathered(k_l.grad), gathered(v_l.grad), *memory_grads]


CASES = [  # (sequence length, memory keys, block-causal)
    (12, 0, False), (13, 0, False), (13, 0, True), (11, 5, True)]


def check_attention_matches_single_process(layouts: list[tuple[int, int]], heads: int = NUM_HEADS,
                                           expected_degrees: tuple[int, int] | None = None) -> dict:
    errors = {}
    for cp, ulysses in layouts:
        topology = _topology(cp, ulysses, heads)
        if expected_degrees is not None:
            assert (topology.plan.ulysses_degree, topology.plan.ring_degree) == expected_degrees
        attention = ContextParallelAttention(sdpa_attention, topology.context_parallel.ulysses,
                                             topology.context_parallel.ring)
        for case in CASES:
            inputs = _inputs(*case, heads=heads)
            expected_out, expected_grads = _single_process(*inputs)
            out, grads = _sharded(attention, topology, *inputs)
            names = ["out", "dq", "dk", "dv", "dk_memory", "dv_memory"]
            for name, got, want in zip(names, [out, *grads], [expected_out, *expected_grads]):
                errors[(cp, ulysses, case, name)] = (got - want).abs().amax().item() if want.numel() else 0.0
    return errors


# (context-parallel degree, Ulysses degree): Ulysses only, ring only, and Ulysses x ring
LAYOUTS = {2: [(2, 2), (2, 1)], 4: [(4, 4), (4, 1), (4, 2), (2, 2)]}


@pytest.mark.parametrize("world_size", [2, 4])
def test_context_parallel_attention_matches_single_process(world_size):
    for rank_errors in run_workers(world_size, check_attention_matches_single_process, LAYOUTS[world_size]):
        worst = max(rank_errors.items(), key=lambda item: item[1])
        assert worst[1] <= 1e-5, f"(cp, ulysses, (seq, memory, causal), tensor) = {worst[0]}: error {worst[1]:.2e}"


@pytest.mark.parametrize("world_size, heads, ulysses, degrees", [
    (3, 6, 3, (3, 1)),  # an odd Ulysses degree (Wan's 12 heads allow 3)
    (3, 4, 0, (1, 3)),  # an odd degree the heads do not divide: all ring
    (6, 4, 0, (2, 3)),  # more ranks than the 4 heads divide: Ulysses 2 x ring 3, chosen automatically
])
def test_odd_and_mixed_layouts_match_single_process(world_size, heads, ulysses, degrees):
    layouts = [(world_size, ulysses)]
    for rank_errors in run_workers(world_size, check_attention_matches_single_process, layouts, heads, degrees):
        worst = max(rank_errors.items(), key=lambda item: item[1])
        assert worst[1] <= 1e-5, f"(cp, ulysses, (seq, memory, causal), tensor) = {worst[0]}: error {worst[1]:.2e}"


def test_all_to_all_round_trip_on_an_odd_group():
    assert all(run_workers(3, check_all_to_all_round_trip, 3))
