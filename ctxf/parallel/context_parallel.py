"""A WanDiT forward with its token sequence sharded over a context-parallel group.

    shard  = SequenceShard.of(S, P, rank)                  this rank's token positions (padded)
    tokens = model.embed(..., token_index=shard positions)  [B, S/P, dim]: only its own tokens,
                                                            their RoPE angles and frames
    hidden = model.run_blocks(tokens)                       attention via ContextParallelAttention
    local  = model.head(hidden, tokens)                     [B, S/P, ph*pw*C] output patches
    out    = ShardedOutput(local, ...).gather()             [B, C, F, H, W] (backward: reduce-scatter)

Nothing of width `dim` ever covers the whole sequence: a rank's activations shrink as 1/P and
only the output latents (`C` channels) are gathered. With `gather_output=False` the forward
returns the `ShardedOutput` itself, for a consumer that reduces over shards (sharded_output.py).

`ContextParallelModel` is the same model, not a copy: it adopts the WanDiT's children and own
parameters (same objects, same names, so state dicts and DeepSpeed checkpoints read exactly
like the plain model's) and only replaces the forward. DeepSpeed ZeRO-3 fetches a module's own
parameters when its forward starts; adopting the WanDiT's own parameters (`scale_shift_table`,
used by `head`) makes this forward fetch them. The context-parallel attention is installed
only for `run_blocks` and removed afterwards, so the plain model stays usable unsharded.

Gradients: every rank of the group ends with the whole sample's output (or loss) and, in
training, the same loss; the group's parameter gradients add up to P times the sample's.
engines.py explains why averaging over all ranks then gives the batch mean.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from ctxf.memory.view import MemoryView
from ctxf.models.wan import WanDiT
from ctxf.parallel.attention import ContextParallelAttention
from ctxf.parallel.sharded_output import ShardedOutput
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
                num_frames_per_block: int | None = None,
                gather_output: bool = True) -> torch.Tensor | ShardedOutput:
        """Same arguments and result as `WanDiT.forward` (without `return_kv`); with
        `gather_output=False` this rank's `ShardedOutput` instead of the whole output."""
        model, groups = self.wan, self.groups
        if groups.degree == 1 and gather_output:
            return model(latents, timestep, text, frame_positions=frame_positions, memory=memory,
                         num_frames_per_block=num_frames_per_block)
        if frame_positions is None and memory is not None:
            frame_positions = memory.query_frame_positions
        _, patch_h, patch_w = model.cfg.patch_size
        frames, height, width = latents.shape[2:]
        shard = SequenceShard.of(frames * (height // patch_h) * (width // patch_w), groups.degree, groups.rank,
                                 groups.pad_sequence)
        tokens = model.embed(latents, timestep, text, frame_positions, num_frames_per_block,
                             token_index=shard.positions(latents.device))
        local_attention = model.attention_fn
        if groups.degree > 1:
            tokens = replace(tokens, query_blocks=shard.mark_padding(tokens.query_blocks, latents.device))
            model.set_attention(ContextParallelAttention(local_attention, groups.ulysses, groups.ring))
        try:
            hidden, _ = model.run_blocks(tokens, memory)
        finally:
            model.set_attention(local_attention)
        output = ShardedOutput(model.head(hidden, tokens), shard, tokens.grid, (patch_h, patch_w),
                               groups.group if groups.degree > 1 else None)
        return output.gather() if gather_output else output
