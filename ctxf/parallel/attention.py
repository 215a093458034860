"""Context-parallel attention: any local attention, run over a sequence sharded across ranks.

`ContextParallelAttention(local, ulysses_group, ring_group)` has the local signature
`attend(q, k, v, mask)` and is installed with `model.set_attention` while the model runs on a
sequence shard (see context_parallel.py):

- mask None: cross-attention (queries sharded, text keys whole on every rank) or an unsharded
  call. That is already correct locally, so it runs `local` untouched.
- mask a `BlockMask` (sharded self-attention always carries one: sharding.py gives every token
  a block id): q is this rank's shard `[B, S/P, H, D]`; k and v are
  [memory keys every rank has | this rank's shard]; the mask is in local coordinates.
  1. Ulysses (degree U, DeepSpeed-Ulysses style): all-to-all q, k, v from sequence-sharded to
     head-sharded, `[B, S/P, H, D] -> [B, S/R, H/U, D]`; the memory keys just keep this rank's
     heads; the block ids are all-gathered over the group (cheap) to build the mask.
  2. Ring (degree R = P / U, for degrees beyond the head count): ring.py over the remaining
     sequence shards; otherwise the local attention on the gathered sequence.
  3. All-to-all back to `[B, S/P, H, D]`.
Before the local call, keys that no real query may see (padding) are removed, and a mask that
hides nothing becomes None, so the bidirectional teacher keeps the backend's unmasked (flash)
path.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ctxf.models.attention import PADDING_BLOCK, AttentionFn, BlockMask
from ctxf.parallel.collectives import Group, all_gather_sequence, heads_to_sequence, sequence_to_heads
from ctxf.parallel.ring import ring_attention


class ContextParallelAttention:
    def __init__(self, local: AttentionFn, ulysses_group: Group, ring_group: Group):
        self.local = local
        self.ulysses_group, self.ring_group = ulysses_group, ring_group
        self.ulysses_degree = dist.get_world_size(ulysses_group)
        self.ulysses_rank = dist.get_rank(ulysses_group)
        self.ring_degree = dist.get_world_size(ring_group)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask | None) -> torch.Tensor:
        if mask is None:
            return self.local(q, k, v, None)
        num_past = k.shape[1] - q.shape[1]
        if num_past < 0 or mask.query_blocks.shape[0] != q.shape[1] or mask.key_blocks.shape[0] != k.shape[1]:
            raise ValueError(f"sharded self-attention expects k, v = [memory | the query shard] and a mask of "
                             f"matching lengths; got q {tuple(q.shape)}, k {tuple(k.shape)}, mask "
                             f"{mask.query_blocks.shape[0]} x {mask.key_blocks.shape[0]}")
        query_blocks, key_blocks = mask.query_blocks, mask.key_blocks
        if self.ulysses_degree > 1:
            q, k, v, query_blocks, key_blocks = self._to_heads(q, k, v, query_blocks, key_blocks, num_past)
        if self.ring_degree > 1:
            out = ring_attention(q, k, v, query_blocks, key_blocks, self.ring_group)
        else:
            out = self._attend_whole(q, k, v, query_blocks, key_blocks)
        if self.ulysses_degree > 1:
            out = heads_to_sequence(out, self.ulysses_group)  # [B, S/R, H/U, D] -> [B, S/P, H, D]
        return out

    def _to_heads(self, q, k, v, query_blocks, key_blocks, num_past):
        heads = q.shape[2] // self.ulysses_degree
        own_heads = slice(self.ulysses_rank * heads, (self.ulysses_rank + 1) * heads)
        q_heads = sequence_to_heads(q, self.ulysses_group)  # [B, S/P, H, D] -> [B, S/R, H/U, D]
        k_heads = sequence_to_heads(k[:, num_past:], self.ulysses_group)
        v_heads = sequence_to_heads(v[:, num_past:], self.ulysses_group)
        # [2, S/P] -> [2, S/R]: query and key block ids of the whole Ulysses group
        blocks = all_gather_sequence(torch.stack([query_blocks, key_blocks[num_past:]]), self.ulysses_group, dim=1)
        key_blocks_heads = blocks[1]
        if num_past:
            # memory keys are the same on every rank: keep this rank's heads, [B, M, H, D] -> [B, M, H/U, D]
            k_heads = torch.cat([k[:, :num_past, own_heads], k_heads], dim=1)
            v_heads = torch.cat([v[:, :num_past, own_heads], v_heads], dim=1)
            key_blocks_heads = torch.cat([key_blocks[:num_past], key_blocks_heads])
        return q_heads, k_heads, v_heads, blocks[0], key_blocks_heads

    def _attend_whole(self, q, k, v, query_blocks, key_blocks) -> torch.Tensor:
        """Local attention over the whole sequence: drop padded keys, drop a mask that hides nothing."""
        keep = key_blocks != PADDING_BLOCK
        if not bool(keep.all()):
            index = keep.nonzero().squeeze(1)
            k, v, key_blocks = k.index_select(1, index), v.index_select(1, index), key_blocks[index]
        if bool(key_blocks.max() <= query_blocks.min()):
            return self.local(q, k, v, None)
        return self.local(q, k, v, BlockMask(query_blocks, key_blocks))
