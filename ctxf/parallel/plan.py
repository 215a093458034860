"""The rank layout of a job, computed from the world size and the config alone (no process).

`plan(world_size, config)` checks that the layout is possible and returns a `ParallelPlan`
(naming every violated rule at once when it is not);
`Topology` (topology.py) turns a plan into process groups. Ranks are numbered so that
consecutive ranks share a node on a GPU cluster, and the groups that talk most stay inside one:

- context-parallel (CP) groups: blocks of `cp` consecutive ranks sharing one sample; CP rank c
  holds the c-th contiguous shard of the sequence.
  - Ulysses groups: blocks of `ulysses` consecutive ranks inside a CP group (all-to-all).
  - ring groups: the ranks of one CP group at the same place in their Ulysses group (stride
    `ulysses`); they pass key/value shards around (`ring = cp / ulysses`).
- data-parallel groups: the ranks at the same place in their CP group (stride `cp`); the job
  sees `dp = world / cp` different samples per micro-step.
- ZeRO group: every rank; the student and the critic are partitioned over the whole job.
- teacher groups: blocks of `teacher_shard_degree` consecutive ranks holding one teacher copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ctxf.config import Config, ConfigError

BACKENDS = ("auto", "nccl", "gloo")


class PlanError(ConfigError):
    """An impossible parallel layout; the message names the numbers and the fix."""


class WorldSizeError(PlanError):
    """The world size is not a multiple of a group size."""


class HeadCountError(PlanError):
    """The Ulysses degree does not divide the number of attention heads."""


class ContextParallelLayoutError(PlanError):
    """The Ulysses degree does not divide the context-parallel degree."""


class SequenceLengthError(PlanError):
    """The sequence does not split evenly over the context-parallel ranks and padding is off."""


class BatchSizeError(PlanError):
    """The global batch does not split into micro-batches over the data-parallel ranks."""


@dataclass(frozen=True)
class ParallelPlan:
    world_size: int
    context_parallel_degree: int
    ulysses_degree: int
    ring_degree: int
    data_parallel_size: int
    teacher_shard_degree: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    global_batch_size: int
    teacher_num_tokens: int
    teacher_tokens_per_rank: int  # after padding to a multiple of the CP degree

    @property
    def teacher_padding(self) -> int:
        return self.teacher_tokens_per_rank * self.context_parallel_degree - self.teacher_num_tokens

    def context_parallel_groups(self) -> list[list[int]]:
        cp = self.context_parallel_degree
        return [list(range(start, start + cp)) for start in range(0, self.world_size, cp)]

    def ulysses_groups(self) -> list[list[int]]:
        u = self.ulysses_degree
        return [list(range(start, start + u)) for start in range(0, self.world_size, u)]

    def ring_groups(self) -> list[list[int]]:
        u, cp = self.ulysses_degree, self.context_parallel_degree
        return [list(range(start + offset, start + cp, u))
                for start in range(0, self.world_size, cp) for offset in range(u)]

    def data_parallel_groups(self) -> list[list[int]]:
        cp = self.context_parallel_degree
        return [list(range(offset, self.world_size, cp)) for offset in range(cp)]

    def teacher_groups(self) -> list[list[int]]:
        t = self.teacher_shard_degree
        return [list(range(start, start + t)) for start in range(0, self.world_size, t)]

    def zero_group(self) -> list[int]:
        return list(range(self.world_size))

    def all_groups(self) -> dict[str, list[list[int]]]:
        """Every group by role, in the order `Topology` creates them."""
        return {"zero": [self.zero_group()], "context_parallel": self.context_parallel_groups(),
                "ulysses": self.ulysses_groups(), "ring": self.ring_groups(),
                "data_parallel": self.data_parallel_groups(), "teacher": self.teacher_groups()}

    def groups_of(self, rank: int) -> dict[str, list[int]]:
        """The group of each role that contains `rank`."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside the world of {self.world_size}")
        return {role: next(g for g in groups if rank in g) for role, groups in self.all_groups().items()}


class PlanErrors(PlanError):
    """Several rules of the layout are violated at once; `errors` holds each, the message lists all."""

    def __init__(self, errors: list[PlanError]):
        self.errors = errors
        listed = "\n".join(f"  - {err}" for err in errors)
        super().__init__(f"{len(errors)} problems with this parallel layout:\n{listed}")


def plan(world_size: int, config: Config) -> ParallelPlan:
    """The rank layout for `world_size` ranks. When it is impossible, raises the `PlanError`
    subclass of the one violated rule, or `PlanErrors` listing every violated rule at once."""
    par, train = config.parallel, config.train
    if world_size < 1:
        raise WorldSizeError(f"world size {world_size} must be at least 1")
    errors: list[PlanError] = []
    if par.backend not in BACKENDS:
        errors.append(PlanError(f"parallel.backend={par.backend!r}: choose one of {', '.join(BACKENDS)}"))
    for name in ("context_parallel_degree", "teacher_shard_degree", "teacher_num_frames", "student_num_frames"):
        if getattr(par, name) < 1:
            errors.append(PlanError(f"parallel.{name}={getattr(par, name)} must be at least 1"))
    cp, shards = par.context_parallel_degree, par.teacher_shard_degree
    if cp >= 1 and world_size % cp:
        errors.append(WorldSizeError(
            f"world size {world_size} is not divisible by parallel.context_parallel_degree={cp}; use a degree "
            f"among {_divisors(world_size)} or change the number of ranks"))
    if shards >= 1 and world_size % shards:
        errors.append(WorldSizeError(f"world size {world_size} is not divisible by parallel.teacher_shard_degree="
                                     f"{shards}; use one of {_divisors(world_size)}"))
    ulysses = 1
    if cp >= 1:
        try:
            ulysses = _ulysses_degree(cp, par.ulysses_degree, config.model.num_heads)
        except PlanError as err:
            errors.append(err)
    dp = world_size // cp if cp >= 1 and world_size % cp == 0 else None
    per_step = train.micro_batch_size * dp if dp else None
    if per_step and train.global_batch_size % per_step:
        errors.append(BatchSizeError(
            f"train.global_batch_size={train.global_batch_size} is not a multiple of train.micro_batch_size="
            f"{train.micro_batch_size} x {dp} data-parallel ranks (world {world_size} / context-parallel {cp}); "
            f"set train.global_batch_size to a multiple of {per_step}"))
    num_tokens = par.teacher_num_frames * config.frame_seq_len
    if cp >= 1 and num_tokens % cp and not par.pad_sequence:
        errors.append(SequenceLengthError(
            f"the teacher sequence of {num_tokens} tokens ({par.teacher_num_frames} frames x {config.frame_seq_len}) "
            f"does not divide over parallel.context_parallel_degree={cp}; set parallel.pad_sequence=true "
            f"(padded tokens are masked) or choose frames / degree so it divides"))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise PlanErrors(errors)
    return ParallelPlan(
        world_size=world_size, context_parallel_degree=cp, ulysses_degree=ulysses, ring_degree=cp // ulysses,
        data_parallel_size=dp, teacher_shard_degree=shards,
        micro_batch_size=train.micro_batch_size, gradient_accumulation_steps=train.global_batch_size // per_step,
        global_batch_size=train.global_batch_size, teacher_num_tokens=num_tokens,
        teacher_tokens_per_rank=math.ceil(num_tokens / cp))


def _ulysses_degree(cp: int, requested: int, num_heads: int) -> int:
    if requested < 0:
        raise PlanError(f"parallel.ulysses_degree={requested} must be >= 0 (0: automatic)")
    if requested == 0:
        return max(u for u in _divisors(cp) if num_heads % u == 0)
    if cp % requested:
        raise ContextParallelLayoutError(
            f"parallel.ulysses_degree={requested} does not divide parallel.context_parallel_degree={cp}; "
            f"use one of {_divisors(cp)} (the rest of the degree runs as ring attention)")
    if num_heads % requested:
        raise HeadCountError(
            f"parallel.ulysses_degree={requested} does not divide model.num_heads={num_heads}: Ulysses gives each "
            f"rank whole heads; use one of {[u for u in _divisors(cp) if num_heads % u == 0]} or 0 (automatic)")
    return requested


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
