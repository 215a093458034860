"""DeepSpeed ZeRO-3 engines for the student and the critic (two engines in one process).

`build_engine(model, role, config, topology)` builds one engine from `parallel.ds_config`
(ds_configs/zero3.json or zero3_offload.json) plus the fields derived from the training config
and the topology, so they cannot disagree: the JSON files must not set them.

How the loss stays right when context-parallel ranks share one sample
---------------------------------------------------------------------
DeepSpeed is told that every rank is data-parallel: the engines' `mpu` reports the ZeRO group
(all W ranks) as the data-parallel group and declares no sequence parallelism, so ZeRO-3
partitions over all ranks and averages gradients over all W of them on every reduction path.
(Declaring sequence parallelism would make DeepSpeed 0.19 sum over the sequence-parallel
ranks on one reduction path and average on the other, depending on `reduce_scatter` and the
bucket size.) Each rank of a context-parallel group of P ranks computes its sample's whole loss:
- its model runs unsharded: each rank's gradient is the sample's gradient g;
- its model runs sharded through `ContextParallelModel` (each rank embeds, runs and unembeds
  only its own tokens, sharded_output.py) and the consumer either gathers the output latents,
  whose backward sums the P copies' gradients and hands each rank its tokens' part
  (reduce-scatter), or reduces its loss over shards with `ShardedOutput.sum_over_shards`, an
  all-reduce whose backward all-reduces the gradient the same way. Every rank's loss is the
  sample's loss L and depends on every rank's tokens, so rank r's parameters receive
  sum over the P copies of dL/d(its tokens): the group's gradients add up to P x g.
Either way the P ranks contribute P x g, and averaging over W = (W / P) x P ranks gives the mean
over the W / P samples: no loss scaling.
DeepSpeed's own batch arithmetic counts ranks, so its `train_batch_size` is
`train.global_batch_size x context_parallel_degree` (a sample is counted once per rank that
holds it); `train_micro_batch_size_per_gpu` and `gradient_accumulation_steps` are the real ones.

Every engine gets its `mpu` explicitly: DeepSpeed keeps the last one in a process-wide global,
and an engine built without one inherits another's.
"""

from __future__ import annotations

import deepspeed
import torch
import torch.distributed as dist
import torch.nn as nn

from ctxf.config import Config
from ctxf.models.wan import WanDiT
from ctxf.parallel.context_parallel import ContextParallelModel
from ctxf.parallel.ds_config import deepspeed_config
from ctxf.parallel.topology import Topology

ROLES = ("student", "critic", "teacher")


class DeepSpeedGroups:
    """The `mpu` DeepSpeed reads its process groups from (see the module docstring)."""

    def __init__(self, topology: Topology):
        self.topology = topology

    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return self.topology.zero_group

    def get_data_parallel_world_size(self) -> int:
        return self.topology.world_size

    def get_data_parallel_rank(self) -> int:
        return dist.get_rank(self.topology.zero_group)

    def get_data_parallel_group_ranks(self) -> list[int]:
        return self.topology.ranks("zero")

    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return self.topology.model_parallel_group

    def get_model_parallel_world_size(self) -> int:
        return 1

    def get_model_parallel_rank(self) -> int:
        return 0


def _wan(model: nn.Module) -> WanDiT:
    if isinstance(model, ContextParallelModel):
        return model.wan
    if isinstance(model, WanDiT):
        return model
    raise TypeError(f"expected a WanDiT or ContextParallelModel, got {type(model).__name__}")


def build_engine(model: nn.Module, role: str, config: Config, topology: Topology) -> deepspeed.DeepSpeedEngine:
    """A ZeRO-3 engine for `model` (a WanDiT, or a ContextParallelModel to shard its sequence)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    train = config.train
    _wan(model).gradient_checkpointing = config.parallel.activation_checkpointing
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=getattr(train, f"{role}_lr"), betas=tuple(getattr(train, f"{role}_betas")),
                                  weight_decay=train.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(config, topology.plan),
                                      mpu=DeepSpeedGroups(topology), dist_init_required=False)
    return engine


def gather_parameters(module: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Whole copies (CPU) of the named parameters of a ZeRO-3 partitioned module, on every rank
    (a collective: every rank must call it with the same names)."""
    params = dict(module.named_parameters())
    selected = [params[name] for name in names]
    with deepspeed.zero.GatheredParameters(selected, modifier_rank=None):
        return {name: params[name].detach().float().cpu().clone() for name in names}
