"""Which tokens a context-parallel rank holds, and the padding that makes shards equal.

A sequence of `length` tokens is padded to `degree x shard_length` and rank c holds tokens
[c x shard_length, (c + 1) x shard_length). Padded slots repeat the last real token (finite
values, so no NaN anywhere) and carry the block id `PADDING_BLOCK`: no real query ever sees a
padded key (key block <= query block fails), while a padded query sees every key (so its
softmax is defined) and its output is dropped when the shards are gathered.

Every token of a sharded sequence carries a block id (0 for bidirectional attention), so
sharded self-attention always receives a `BlockMask`, and an attention call with mask None is
known to be cross-attention (or unsharded) and runs locally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ctxf.models.attention import PADDING_BLOCK
from ctxf.parallel.collectives import Group, gather_sequence
from ctxf.parallel.plan import SequenceLengthError


@dataclass(frozen=True)
class SequenceShard:
    length: int
    degree: int
    rank: int

    @classmethod
    def of(cls, length: int, degree: int, rank: int, pad_sequence: bool = True) -> "SequenceShard":
        if length % degree and not pad_sequence:
            raise SequenceLengthError(f"a sequence of {length} tokens does not divide over {degree} context-parallel "
                                      f"ranks and padding is off; set parallel.pad_sequence=true")
        return cls(length, degree, rank)

    @property
    def shard_length(self) -> int:
        return math.ceil(self.length / self.degree)

    @property
    def start(self) -> int:
        return self.rank * self.shard_length

    def positions(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """`[shard_length]` positions in the unpadded sequence (padding repeats the last token)."""
        positions = torch.arange(self.start, self.start + self.shard_length, device=device)
        return positions.clamp(max=self.length - 1)

    def padding(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """`[shard_length]` True where the slot is padding."""
        return torch.arange(self.start, self.start + self.shard_length, device=device) >= self.length

    def take(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's (padded) shard of a full-length tensor."""
        return x.index_select(dim, self.positions(x.device))

    def block_ids(self, blocks: torch.Tensor | None, device: torch.device | str = "cpu") -> torch.Tensor:
        """`[shard_length]` block ids of the shard from the whole sequence's `blocks` (None: bidirectional)."""
        return self.mark_padding(None if blocks is None else blocks.to(device)[self.positions(device)], device)

    def mark_padding(self, shard_blocks: torch.Tensor | None, device: torch.device | str = "cpu") -> torch.Tensor:
        """`[shard_length]` block ids of this shard's own tokens (0 everywhere if None), padding -> PADDING_BLOCK."""
        ids = torch.zeros(self.shard_length, dtype=torch.long, device=device) if shard_blocks is None else shard_blocks
        return ids.masked_fill(self.padding(ids.device), PADDING_BLOCK)

    def gather(self, x: torch.Tensor, group: Group, dim: int = 1) -> torch.Tensor:
        """Every rank's shard concatenated along `dim`, padding removed (differentiable)."""
        return gather_sequence(x, group, dim).narrow(dim, 0, self.length)
