"""The output of a context-parallel forward: each rank's own tokens, as output latents.

`ContextParallelModel` runs the output head on the shard, so a rank holds `local`
`[B, s, ph*pw*C]`: the predicted latents of its own tokens, `C` channels per latent pixel
instead of the model width (16 x 4 = 64 against 1536 at Wan2.1-1.3B scale). Two ways to use it:

- `gather()` -> `[B, C, F, H, W]`, the whole sample's output on every rank (padding dropped).
  Only these latents travel. Its backward sums the gradient of every rank's copy and hands
  each rank its tokens' part (reduce-scatter).
- reduce over shards, without ever holding the whole output: `take(x)` gives any `[B, C, F, H, W]`
  tensor (the target, a weight) at this rank's tokens in the same layout, `valid` marks real
  tokens (not padding) and `frame_index` each token's frame; the consumer sums its loss terms
  over its tokens and `sum_over_shards(partial)` adds the group's partial sums. Every rank then
  holds the whole sample's loss, and the backward of that sum adds every rank's gradient too.

Either way each rank of the group ends with the whole sample's loss and the group's parameter
gradients add up to P times the sample's; engines.py explains why that is what DeepSpeed needs.

It is a NamedTuple because DeepSpeed ZeRO-3 looks for tensors only in tuples, lists and dicts of
a module's output: it hooks `local` there to gather the output head's parameters again for the
backward, and would not see the tensor inside any other object.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed.nn.functional as dist_nn

from ctxf.models.wan import patchify, unpatchify
from ctxf.parallel.collectives import Group
from ctxf.parallel.sharding import SequenceShard


class ShardedOutput(NamedTuple):
    local: torch.Tensor  # [B, s, ph*pw*C] output patches of this rank's tokens (padding included)
    shard: SequenceShard
    grid: tuple[int, int, int]  # (frames, grid_height, grid_width) of the whole sample
    patch: tuple[int, int]  # (patch_height, patch_width)
    group: Group | None  # the context-parallel group; None when the degree is 1

    def gather(self) -> torch.Tensor:
        """`[B, C, F, H, W]`: every rank's output latents (differentiable, backward reduce-scatters)."""
        patches = self.local if self.group is None else self.shard.gather(self.local, self.group)
        return unpatchify(patches, self.grid, self.patch)

    def take(self, latents: torch.Tensor) -> torch.Tensor:
        """A whole `[B, C, F, H, W]` tensor at this rank's tokens, `[B, s, ph*pw*C]` like `local`."""
        return self.shard.take(patchify(latents, self.patch))

    @property
    def valid(self) -> torch.Tensor:
        """`[s]` True for this rank's real tokens, False for padding."""
        return ~self.shard.padding(self.local.device)

    @property
    def frame_index(self) -> torch.Tensor:
        """`[s]` the latent frame of each of this rank's tokens."""
        _, grid_h, grid_w = self.grid
        return self.shard.positions(self.local.device) // (grid_h * grid_w)

    def sum_over_shards(self, partial: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's `partial` (differentiable: the backward sums the gradients too)."""
        if self.group is None:
            return partial
        return dist_nn.all_reduce(partial, group=self.group)
