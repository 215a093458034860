"""Exponential moving average of a ZeRO-3 engine's trained weights, kept partitioned.

Each rank averages only the partition of every trained parameter it owns (`param.ds_tensor`
under ZeRO-3; the whole tensor otherwise), in float32, so the EMA costs 4 bytes per parameter
divided by the world size, like the optimizer state. `gather_full` assembles whole tensors (every
rank takes part; the result is on every rank) for a checkpoint's `<role>_ema.safetensors`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


def _local(param: nn.Parameter) -> torch.Tensor:
    return param.ds_tensor if hasattr(param, "ds_tensor") else param.data


class PartitionedEMA:
    def __init__(self, module: nn.Module, decay: float, group: dist.ProcessGroup | None = None):
        self.decay, self.group = decay, group
        self.params = {name: p for name, p in module.named_parameters() if p.requires_grad}
        self.shadow = {name: _local(p).detach().float().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].lerp_(_local(param).float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, first {missing[0]}; the run's trained "
                           f"parameters changed (train.ema_decay, lora.*)")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])

    @torch.no_grad()
    def gather_full(self) -> dict[str, torch.Tensor]:
        """Whole EMA tensors on every rank (a collective over the engine's partition group)."""
        full = {}
        for name, param in self.params.items():
            shard = self.shadow[name]
            if not hasattr(param, "ds_tensor"):
                full[name] = shard.clone()
                continue
            world = dist.get_world_size(self.group)
            # [partition] per rank -> [world * partition] -> the first ds_numel, in the parameter's shape
            gathered = shard.new_empty(world * shard.numel())
            dist.all_gather_into_tensor(gathered, shard.contiguous(), group=self.group)
            full[name] = gathered[: param.ds_numel].view(param.ds_shape).clone()
        return full
