"""Local attention behind one signature, with interchangeable backends.

    attend(q, k, v, mask) -> out        q [B, Sq, H, D], k and v [B, Sk, H, D], out [B, Sq, H, D]

`mask` is None (every query sees every key) or a `BlockMask`: each query and key carries a
block index and a query sees a key when key_block <= query_block. That one rule covers the
student's block-causal chunks, cached memory (block -1: always visible) and padding (keys with
a block larger than any query's are never seen). Context-parallel wrappers in `ctxf.parallel`
take and return the same signature, so the model never knows whether it is sharded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange

PADDING_BLOCK = 2 ** 62


@dataclass(frozen=True)
class BlockMask:
    query_blocks: torch.Tensor  # [Sq] long
    key_blocks: torch.Tensor  # [Sk] long

    def dense(self) -> torch.Tensor:
        """Boolean `[Sq, Sk]`, True where the query may attend to the key."""
        return self.key_blocks[None, :] <= self.query_blocks[:, None]


class AttentionFn(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: BlockMask | None) -> torch.Tensor: ...


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask | None) -> torch.Tensor:
    attn_mask = None if mask is None else mask.dense().to(q.device)
    q, k, v = (rearrange(x, "b s h d -> b h s d") for x in (q, k, v))  # SDPA takes heads first
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return rearrange(out, "b h s d -> b s h d")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask | None) -> torch.Tensor:
    """flash-attn 2 on CUDA in bf16/fp16; masked calls (one-pass block-causal) fall back to SDPA."""
    if mask is not None:
        return sdpa_attention(q, k, v, mask)
    from flash_attn import flash_attn_func

    dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    # flash-attn takes [B, S, H, D] as is
    out = flash_attn_func(q.to(dtype), k.to(dtype), v.to(dtype))
    return out.to(q.dtype)


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask | None) -> torch.Tensor:
    """torch's flex attention: block-sparse block-causal masks without a dense [Sq, Sk] tensor."""
    from torch.nn.attention.flex_attention import create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as flex

    block_mask = None
    if mask is not None:
        query_blocks, key_blocks = mask.query_blocks.to(q.device), mask.key_blocks.to(q.device)

        def visible(batch, head, q_idx, kv_idx):
            return key_blocks[kv_idx] <= query_blocks[q_idx]

        block_mask = create_block_mask(visible, None, None, q.shape[1], k.shape[1], device=q.device)
    q, k, v = (rearrange(x, "b s h d -> b h s d") for x in (q, k, v))  # flex attention takes heads first
    out = flex(q, k, v, block_mask=block_mask)
    return rearrange(out, "b h s d -> b s h d")


_BACKENDS: dict[str, Callable] = {"sdpa": sdpa_attention, "flash": flash_attention, "flex": flex_attention}


def get_attention_backend(name: str) -> AttentionFn:
    if name not in _BACKENDS:
        raise ValueError(f"model.attention_backend={name!r}: choose one of {', '.join(_BACKENDS)}")
    if name == "flash":
        if not torch.cuda.is_available():
            raise RuntimeError("model.attention_backend=flash needs CUDA; use sdpa on CPU")
        try:
            import flash_attn  # noqa: F401
        except ImportError as err:
            raise RuntimeError("model.attention_backend=flash needs flash-attn: pip install 'ctxf[flash]'") from err
    return _BACKENDS[name]
