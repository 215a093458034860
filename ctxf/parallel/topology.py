"""Every process group of the job, created once from a `ParallelPlan` and passed explicitly.

This is the only place that creates process groups. `Topology.build(config)` needs an
initialised default process group (`ctxf.parallel.launch.init_distributed`); every rank
creates every group in the same order, as torch.distributed requires, and keeps its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from ctxf.config import Config
from ctxf.parallel.plan import ParallelPlan, WorldSizeError, plan


@dataclass(frozen=True)
class ContextParallelGroups:
    """What sequence sharding needs: the CP group, its Ulysses and ring sub-groups, this rank's place."""

    group: dist.ProcessGroup
    ulysses: dist.ProcessGroup
    ring: dist.ProcessGroup
    degree: int
    rank: int
    pad_sequence: bool


class Topology:
    def __init__(self, parallel_plan: ParallelPlan, pad_sequence: bool = True):
        if not dist.is_initialized():
            raise RuntimeError("Topology needs torch.distributed initialised; call "
                               "ctxf.parallel.launch.init_distributed(config) first")
        if dist.get_world_size() != parallel_plan.world_size:
            raise WorldSizeError(f"the plan is for {parallel_plan.world_size} ranks but the job has "
                                 f"{dist.get_world_size()}; build the plan with the job's world size")
        self.plan = parallel_plan
        self.rank = dist.get_rank()
        self.world_size = parallel_plan.world_size
        self._groups: dict[str, dist.ProcessGroup] = {}
        self._ranks: dict[str, list[int]] = {}
        for role, rank_lists in parallel_plan.all_groups().items():
            for ranks in rank_lists:
                handle = dist.new_group(ranks)
                if self.rank in ranks:
                    self._groups[role], self._ranks[role] = handle, ranks
        # DeepSpeed asks for a model-parallel group; this project has no tensor parallelism, so
        # each rank is its own model-parallel group.
        for rank in range(self.world_size):
            handle = dist.new_group([rank])
            if rank == self.rank:
                self.model_parallel_group = handle
        self.context_parallel = ContextParallelGroups(
            group=self._groups["context_parallel"], ulysses=self._groups["ulysses"], ring=self._groups["ring"],
            degree=parallel_plan.context_parallel_degree, rank=self.context_parallel_rank, pad_sequence=pad_sequence)

    @classmethod
    def build(cls, config: Config) -> "Topology":
        """The topology of the running job (world size from torch.distributed)."""
        return cls(plan(dist.get_world_size(), config), pad_sequence=config.parallel.pad_sequence)

    def ranks(self, role: str) -> list[int]:
        """Global ranks of this rank's group of `role` (zero, context_parallel, ulysses, ring,
        data_parallel, teacher)."""
        return list(self._ranks[role])

    @property
    def zero_group(self) -> dist.ProcessGroup:
        """Every rank: the student and critic are ZeRO-3 partitioned over it."""
        return self._groups["zero"]

    @property
    def data_parallel_group(self) -> dist.ProcessGroup:
        """Ranks holding different samples at the same place in their context-parallel groups."""
        return self._groups["data_parallel"]

    @property
    def teacher_group(self) -> dist.ProcessGroup:
        """Ranks sharing one copy of the frozen teacher's parameters."""
        return self._groups["teacher"]

    @property
    def context_parallel_rank(self) -> int:
        """Which sequence shard this rank holds."""
        return self.rank % self.plan.context_parallel_degree

    @property
    def data_parallel_rank(self) -> int:
        """Which sample of the micro-step this rank works on (shared by its context-parallel group)."""
        return self.rank // self.plan.context_parallel_degree
