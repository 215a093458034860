"""`plan(world_size, config)`: the rank layout for 8, 64 and 512 ranks, and every impossible
layout raising its own error. Pure: no process group is created."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from ctxf.config import load_config
from ctxf.parallel.plan import (BatchSizeError, ContextParallelLayoutError, HeadCountError, PlanError, PlanErrors,
                                SequenceLengthError, WorldSizeError, plan)


def wan(*overrides: str):
    """The Wan2.1-1.3B geometry on a neutral layout (no context parallelism, replicated teacher)."""
    return load_config("wan1.3b", ["train.global_batch_size=512", "parallel.context_parallel_degree=1",
                                   "parallel.teacher_shard_degree=1", *overrides])


def _assert_partition(groups: list[list[int]], world_size: int, size: int) -> None:
    """Every rank in exactly one group, every group of `size` ranks."""
    assert sorted(r for g in groups for r in g) == list(range(world_size))
    assert all(len(g) == size for g in groups)


LAYOUTS = [  # (world size, cp, teacher shards, expected Ulysses x ring) for Wan2.1's 12 heads
    (8, 1, 1, (1, 1)), (8, 4, 2, (4, 1)), (8, 8, 8, (4, 2)),
    (64, 4, 8, (4, 1)), (64, 16, 64, (4, 4)), (64, 2, 1, (2, 1)),
    (512, 8, 8, (4, 2)), (512, 64, 16, (4, 16)), (512, 512, 512, (4, 128))]


@pytest.mark.parametrize("world_size, cp, teacher_shards, ulysses_ring", LAYOUTS)
def test_layout_groups_partition_the_ranks_as_documented(world_size, cp, teacher_shards, ulysses_ring):
    p = plan(world_size, wan(f"parallel.context_parallel_degree={cp}",
                             f"parallel.teacher_shard_degree={teacher_shards}"))
    assert (p.ulysses_degree, p.ring_degree) == ulysses_ring
    assert p.data_parallel_size == world_size // cp
    _assert_partition(p.context_parallel_groups(), world_size, cp)
    _assert_partition(p.ulysses_groups(), world_size, p.ulysses_degree)
    _assert_partition(p.ring_groups(), world_size, p.ring_degree)
    _assert_partition(p.data_parallel_groups(), world_size, p.data_parallel_size)
    _assert_partition(p.teacher_groups(), world_size, teacher_shards)
    assert p.zero_group() == list(range(world_size))
    for group in p.context_parallel_groups() + p.ulysses_groups() + p.teacher_groups():
        assert group == list(range(group[0], group[0] + len(group))), "these groups must be consecutive ranks"
    for rank in (0, world_size // 2 + 1, world_size - 1):
        mine = p.groups_of(rank)
        cp_group = mine["context_parallel"]
        assert set(mine["ulysses"]) <= set(cp_group) and set(mine["ring"]) <= set(cp_group)
        assert set(mine["ulysses"]) & set(mine["ring"]) == {rank}
        # the data-parallel group takes one rank from every CP group, at this rank's place in it
        assert [r % cp for r in mine["data_parallel"]] == [rank % cp] * p.data_parallel_size
    # the Ulysses group of CP rank c holds shards that are contiguous in the sequence
    first = p.context_parallel_groups()[0]
    assert p.ulysses_groups()[0] == first[:p.ulysses_degree]


@pytest.mark.parametrize("world_size, micro, expected_accumulation", [(8, 1, 64), (64, 2, 4), (512, 1, 1)])
def test_batch_arithmetic(world_size, micro, expected_accumulation):
    p = plan(world_size, wan(f"train.micro_batch_size={micro}"))
    assert p.gradient_accumulation_steps == expected_accumulation
    assert p.micro_batch_size * p.gradient_accumulation_steps * p.data_parallel_size == p.global_batch_size


def test_teacher_sequence_is_padded_to_the_degree():
    p = plan(64, wan("parallel.context_parallel_degree=32"))  # 65,520 tokens do not divide by 32
    assert p.teacher_num_tokens == 42 * 1560
    assert p.teacher_tokens_per_rank == 2048 and p.teacher_padding == 2048 * 32 - 65520


IMPOSSIBLE = [
    (64, ["parallel.context_parallel_degree=3"], WorldSizeError, "not divisible by parallel.context_parallel_degree"),
    (8, ["parallel.teacher_shard_degree=3"], WorldSizeError, "parallel.teacher_shard_degree"),
    (0, [], WorldSizeError, "at least 1"),
    (8, ["parallel.context_parallel_degree=8", "parallel.ulysses_degree=8"], HeadCountError, "model.num_heads=12"),
    (8, ["parallel.context_parallel_degree=4", "parallel.ulysses_degree=3"], ContextParallelLayoutError,
     "does not divide parallel.context_parallel_degree"),
    (64, ["parallel.context_parallel_degree=32", "parallel.pad_sequence=false"], SequenceLengthError,
     "parallel.pad_sequence=true"),
    (64, ["train.global_batch_size=2"], BatchSizeError, "multiple of 64"),
    (8, ["train.global_batch_size=12", "train.micro_batch_size=2"], BatchSizeError, "multiple of 16"),
    (8, ["parallel.backend=mpi"], PlanError, "choose one of auto, nccl, gloo"),
    (8, ["parallel.context_parallel_degree=0"], PlanError, "must be at least 1"),
    (8, ["parallel.ulysses_degree=-1"], PlanError, "must be >= 0"),
]


@pytest.mark.parametrize("world_size, overrides, error, message", IMPOSSIBLE)
def test_impossible_layouts_raise_their_named_error(world_size, overrides, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        plan(world_size, wan(*overrides))


def test_sequence_divisible_without_padding_is_fine():
    p = plan(64, wan("parallel.context_parallel_degree=16", "parallel.pad_sequence=false"))
    assert p.teacher_padding == 0


def test_plan_starts_no_process():
    plan(512, wan("parallel.context_parallel_degree=64"))
    assert not dist.is_initialized()


def test_every_violated_rule_is_reported_at_once():
    # 63 ranks with the shipped Wan preset (cp 4, teacher shards 8), a batch and a Ulysses degree that
    # do not fit either: one run names all four problems
    config = load_config("wan1.3b", ["parallel.ulysses_degree=5", "parallel.pad_sequence=false"])
    with pytest.raises(PlanErrors) as err:
        plan(63, config)
    kinds = [type(e) for e in err.value.errors]
    assert kinds.count(WorldSizeError) == 2 and ContextParallelLayoutError in kinds
    message = str(err.value)
    assert "parallel.context_parallel_degree=4" in message and "parallel.teacher_shard_degree=8" in message
    assert "parallel.ulysses_degree=5" in message and message.startswith(f"{len(kinds)} problems")
    assert isinstance(err.value, PlanError)


def test_a_single_violation_keeps_its_own_error_type():
    with pytest.raises(WorldSizeError):
        plan(63, wan("parallel.context_parallel_degree=2"))
