"""Ring attention: queries stay, key/value shards travel around the ring group.

Each rank holds a query shard and a key/value shard (plus memory keys every rank has, the
first `k.shape[1] - q.shape[1]` keys). Over `R` steps every key/value shard visits every rank;
each step attends the local queries to the visiting keys and folds the partial result in with
its log-sum-exp (the online softmax), so the result equals attention over the whole sequence.
The visiting shard carries its block ids, so block masks and padding hold across ranks.

The per-step attention is written in plain torch (float32 scores of one query shard against
one key shard, in query chunks of bounded size so a long shard never holds its whole score
matrix) because it must return the log-sum-exp, which the local attention signature does not;
autograd differentiates through it and through `ring_shift`, whose backward sends gradients
back around the ring. In training each chunk runs under `torch.utils.checkpoint`: autograd keeps
its inputs, not its score matrices, and the backward recomputes them one chunk at a time (one
more score computation per chunk, instead of `[B, H, Sq, Sk]` float32 kept per ring step).
Masked scores get a large finite negative value rather than -inf, so a query that sees no key
of some shard gets weight 0 for it, never NaN.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from ctxf.parallel.collectives import Group, ring_shift

_HIDDEN_SCORE = -1e30
# elements of one float32 score matrix [B, H, chunk, Sk] (64 MiB): queries are taken in chunks that
# fit, never the whole [B, H, Sq, Sk] at once (estimates.py counts three of these alive)
SCORE_ELEMENTS = 2 ** 24


def _attend_shard(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_blocks: torch.Tensor,
                  key_blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of `q [B, Sq, H, D]` to one key shard: output `[B, Sq, H, D]` and log-sum-exp `[B, Sq, H]`,
    in query chunks whose score matrix has at most `SCORE_ELEMENTS` elements."""
    batch, _, heads, _ = q.shape
    chunk = max(1, SCORE_ELEMENTS // (batch * heads * k.shape[1]))
    attend = _attend_chunk
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        attend = partial(checkpoint, _attend_chunk, use_reentrant=False)  # backward recomputes the scores
    parts = [attend(q[:, start:start + chunk], k, v, query_blocks[start:start + chunk], key_blocks)
             for start in range(0, q.shape[1], chunk)]
    return torch.cat([out for out, _ in parts], dim=1), torch.cat([lse for _, lse in parts], dim=1)


def _attend_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_blocks: torch.Tensor,
                  key_blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = q.shape[-1] ** -0.5
    # [B, Sq, H, D] x [B, Sk, H, D] -> [B, H, Sq, Sk]
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    visible = key_blocks[None, :] <= query_blocks[:, None]
    scores = scores.masked_fill(~visible, _HIDDEN_SCORE)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    # [B, H, Sq, Sk] x [B, Sk, H, D] -> [B, Sq, H, D]; lse [B, H, Sq] -> [B, Sq, H]
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.float()), lse.transpose(1, 2)


def _fold(acc: tuple[torch.Tensor, torch.Tensor] | None,
          part: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial softmax results over disjoint key sets."""
    if acc is None:
        return part
    (out, lse), (part_out, part_lse) = acc, part
    total = torch.logaddexp(lse, part_lse)
    # weights [B, Sq, H] -> [B, Sq, H, 1]
    return (out * torch.exp(lse - total)[..., None] + part_out * torch.exp(part_lse - total)[..., None], total)


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_blocks: torch.Tensor,
                   key_blocks: torch.Tensor, group: Group) -> torch.Tensor:
    """Attention of the local query shard to the whole ring's keys (and the shared memory keys).

    q `[B, Sq, H, D]`; k, v `[B, M + Sq, H, D]` = [memory (same on every rank) | local shard];
    query_blocks `[Sq]`, key_blocks `[M + Sq]`. Returns `[B, Sq, H, D]` in q's dtype.
    """
    num_past = k.shape[1] - q.shape[1]
    acc = None
    if num_past:
        acc = _attend_shard(q, k[:, :num_past], v[:, :num_past], query_blocks, key_blocks[:num_past])
    shard_k, shard_v, shard_blocks = k[:, num_past:], v[:, num_past:], key_blocks[num_past:]
    for step in range(dist.get_world_size(group)):
        if step:
            shard_k, shard_v, shard_blocks = ring_shift([shard_k, shard_v, shard_blocks], group)
        acc = _fold(acc, _attend_shard(q, shard_k, shard_v, query_blocks, shard_blocks))
    return acc[0].to(q.dtype)
