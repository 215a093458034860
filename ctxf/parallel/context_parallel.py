"""A WanDiT forward with its token sequence sharded over a context-parallel group.

    tokens = model.embed(...)                  every rank, whole sequence (cheap)
    local  = shard.select_tokens(tokens)       this rank's [B, S/P, dim], padded, with block ids
    hidden = model.run_blocks(local)           attention via ContextParallelAttention
    hidden = shard.gather(hidden)              [B, S, dim] on every rank (backward: reduce-scatter)
    out    = model.unembed(hidden, tokens)     every rank, whole sequence

`ContextParallelModel` is the same model, not a copy: it adopts the WanDiT's children and own
parameters (same objects, same names, so state dicts and DeepSpeed checkpoints read exactly
like the plain model's) and only replaces the forward. DeepSpeed ZeRO-3 fetches a module's own
parameters when its forward starts; adopting the WanDiT's own parameters (`scale_shift_table`,
used by `unembed`) makes this forward fetch them. The context-parallel attention is installed
only for `run_blocks` and removed afterwards, so the plain model stays usable unsharded.

Gradients: every rank of the group computes the output of the whole sample and, in training,
the same loss from it. The gather's backward sums the gradients of those copies, so the group's
parameter gradients add up to P times the sample's; engines.py explains why averaging over all
ranks then gives the batch mean.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ctxf.memory.view import MemoryView
from ctxf.models.wan import WanDiT
from ctxf.parallel.attention import ContextParallelAttention
from ctxf.parallel.sharding import SequenceShard
from ctxf.parallel.topology import ContextParallelGroups


class ContextParallelModel(nn.Module):
    def __init__(self, model: WanDiT, groups: ContextParallelGroups):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.__dict__["wan"] = model  # held, not registered: its parameters are registered above
        self.groups = groups

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *,
                frame_positions: torch.Tensor | None = None, memory: MemoryView | None = None,
                num_frames_per_block: int | None = None) -> torch.Tensor:
        """Same arguments and result as `WanDiT.forward` (without `return_kv`)."""
        model, groups = self.wan, self.groups
        if groups.degree == 1:
            return model(latents, timestep, text, frame_positions=frame_positions, memory=memory,
                         num_frames_per_block=num_frames_per_block)
        if frame_positions is None and memory is not None:
            frame_positions = memory.query_frame_positions
        tokens = model.embed(latents, timestep, text, frame_positions, num_frames_per_block)
        shard = SequenceShard.of(tokens.hidden.shape[1], groups.degree, groups.rank, groups.pad_sequence)
        local_attention = model.attention_fn
        model.set_attention(ContextParallelAttention(local_attention, groups.ulysses, groups.ring))
        try:
            hidden, _ = model.run_blocks(shard.select_tokens(tokens), memory)
        finally:
            model.set_attention(local_attention)
        return model.unembed(shard.gather(hidden, groups.group), tokens)
