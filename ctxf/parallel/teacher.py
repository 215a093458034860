"""The frozen teacher: never trained, replicated or partitioned over its group, run context-parallel.

With `parallel.teacher_shard_degree = T > 1` each rank keeps 1/T of every teacher parameter
(`deepspeed.zero.Init(module=..., data_parallel_group=teacher group)`, which broadcasts rank 0's
values of the group first) and the forward gathers them one block at a time: a forward
pre-hook on every block gathers its parameters, a forward hook frees them again, so at most
one block (plus the small stem: embeddings, output head) is whole at any moment. With T = 1
every rank holds the whole teacher and nothing is gathered.

The teacher runs under `torch.no_grad()` with `requires_grad=False` parameters; no optimizer
ever sees them, and DeepSpeed engines never wrap it.
"""

from __future__ import annotations

import deepspeed
import torch
import torch.nn as nn

from ctxf.memory.view import MemoryView
from ctxf.models.wan import WanDiT
from ctxf.parallel.context_parallel import ContextParallelModel
from ctxf.parallel.topology import Topology


def _is_partitioned(param: nn.Parameter) -> bool:
    return hasattr(param, "ds_tensor")


def held_parameter_bytes(module: nn.Module) -> int:
    """Bytes of parameter storage this rank holds for `module` (its partitions when partitioned)."""
    total = 0
    for param in module.parameters():
        tensor = param.ds_tensor if _is_partitioned(param) else param.data
        total += tensor.untyped_storage().nbytes()
    return total


class _GatherPerForward:
    """Gathers a module's partitioned parameters for the duration of each of its forwards."""

    def __init__(self, module: nn.Module):
        self.params = list(module.parameters())
        self.open: list[deepspeed.zero.GatheredParameters] = []
        self.handles = [module.register_forward_pre_hook(self._before),
                        module.register_forward_hook(self._after, always_call=True)]  # frees even if forward raised

    def _before(self, module: nn.Module, args) -> None:
        gathered = deepspeed.zero.GatheredParameters(self.params, modifier_rank=None)
        gathered.__enter__()
        self.open.append(gathered)

    def _after(self, module: nn.Module, args, output) -> None:
        self.open.pop().__exit__(None, None, None)


class FrozenTeacher:
    def __init__(self, model: WanDiT, topology: Topology):
        model.requires_grad_(False)
        model.eval()
        self.model = model
        self.runner = ContextParallelModel(model, topology.context_parallel)
        self.shard_degree = topology.plan.teacher_shard_degree
        self._block_gathers: list[_GatherPerForward] = []
        self._stem_params: list[nn.Parameter] = []
        if self.shard_degree > 1:
            dtype = next(model.parameters()).dtype
            deepspeed.zero.Init(module=model, data_parallel_group=topology.teacher_group,
                                mem_efficient_linear=False, dtype=dtype)
            self._block_gathers = [_GatherPerForward(block) for block in model.blocks]
            block_params = {id(p) for block in model.blocks for p in block.parameters()}
            self._stem_params = [p for p in model.parameters() if id(p) not in block_params]

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *,
                 frame_positions: torch.Tensor | None = None, memory: MemoryView | None = None) -> torch.Tensor:
        """The teacher's velocity for `latents [B, C, F, H, W]`, sequence-sharded over the CP group."""
        with deepspeed.zero.GatheredParameters(self._stem_params, modifier_rank=None,
                                               enabled=bool(self._stem_params)):
            return self.runner(latents, timestep, text, frame_positions=frame_positions, memory=memory)

    def held_parameter_bytes(self) -> int:
        return held_parameter_bytes(self.model)
