"""A Wan2.1-style diffusion transformer with bidirectional and block-causal (KV-cached) attention.

Parameter names match diffusers' `WanTransformer3DModel`, so its `save_pretrained` checkpoints
load as they are (`ctxf.ckpt.wan_keys` maps Wan's original names). diffusers' condition
embedder and feed-forward are used as they are; the attention, block and model forward are our
own because diffusers' Wan cannot take a KV cache, a block-causal mask or RoPE positions chosen
by a memory, and the student needs all three.

The forward is split in stages (`embed`, `run_blocks`, `head`, `unpatchify`) so that context
parallelism can run the first three on one shard of the tokens (`embed(..., token_index=)`
patch-embeds only those tokens) from outside (`ctxf.parallel`) without a single distributed
line in here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from diffusers.models.attention import FeedForward
from einops import rearrange
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding
from einops import rearrange

from ctxf.config import ModelConfig
from ctxf.memory.view import MemoryView
from ctxf.models.attention import AttentionFn, BlockMask, get_attention_backend
from ctxf.models.rope import RotaryEmbedding3D, apply_rope

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TokenBatch:
    """Everything the blocks need, per token where it varies along the sequence."""

    hidden: torch.Tensor  # [B, S, dim]
    frame_index: torch.Tensor  # [S] input frame of each token (selects its modulation)
    rope_cos: torch.Tensor  # [S, head_dim / 2]
    rope_sin: torch.Tensor  # [S, head_dim / 2]
    query_blocks: torch.Tensor | None  # [S] causal block of each token; None: bidirectional
    modulation: torch.Tensor  # [B, F, 6, dim] timestep projection per frame, float32
    head_modulation: torch.Tensor  # [B, F, dim] timestep embedding per frame, float32
    text: torch.Tensor  # [B, L, dim] projected text
    grid: tuple[int, int, int]  # (frames, grid_height, grid_width) of the whole input, sharded or not


def _per_token(per_frame: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
    """[B, F, dim] -> [B, S, dim] by each token's frame."""
    return per_frame.index_select(1, frame_index)


class WanAttentionProjections(nn.Module):
    """q, k, v, out projections and RMS qk-norm across heads: the parameters of diffusers' WanAttention."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)


class WanSelfAttention(WanAttentionProjections):
    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.norm_q(self.to_q(x)), self.norm_k(self.to_k(x)), self.to_v(x)
        return tuple(rearrange(x, "b s (h d) -> b s h d", h=self.num_heads) for x in (q, k, v))

    def forward(self, x: torch.Tensor, tokens: TokenBatch, past: KV | None,
                attend: AttentionFn) -> tuple[torch.Tensor, KV]:
        """Attend from the input tokens to [cached memory | input]; `past` holds the memory's keys
        already rotated to their positions. Returns the output and the input's un-rotated (k, v),
        which the memory may store."""
        q, k, v = self.project(x)
        q_rot = apply_rope(q, tokens.rope_cos, tokens.rope_sin)
        k_rot = apply_rope(k, tokens.rope_cos, tokens.rope_sin)
        k_all, v_all, mask = k_rot, v, None
        if past is not None:
            k_past, v_past = past
            k_all = torch.cat([k_past, k_rot], dim=1)
            v_all = torch.cat([v_past, v], dim=1)
        if tokens.query_blocks is not None:
            num_past = k_all.shape[1] - k.shape[1]
            memory_blocks = tokens.query_blocks.new_full((num_past,), -1)
            mask = BlockMask(tokens.query_blocks, torch.cat([memory_blocks, tokens.query_blocks]))
        out = attend(q_rot, k_all, v_all, mask)
        return self.to_out[0](rearrange(out, "b s h d -> b s (h d)")), (k, v)


class WanCrossAttention(WanAttentionProjections):
    def forward(self, x: torch.Tensor, text: torch.Tensor, attend: AttentionFn) -> torch.Tensor:
        q = rearrange(self.norm_q(self.to_q(x)), "b s (h d) -> b s h d", h=self.num_heads)
        k = rearrange(self.norm_k(self.to_k(text)), "b l (h d) -> b l h d", h=self.num_heads)
        v = rearrange(self.to_v(text), "b l (h d) -> b l h d", h=self.num_heads)
        return self.to_out[0](rearrange(attend(q, k, v, None), "b s h d -> b s (h d)"))


class WanBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.attn1 = WanSelfAttention(dim, cfg.num_heads, cfg.eps)
        self.attn2 = WanCrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, inner_dim=cfg.ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, tokens: TokenBatch, past: KV | None,
                attend: AttentionFn) -> tuple[torch.Tensor, KV]:
        # [1, 6, dim] + [B, F, 6, dim]: (shift, scale, gate) of attention, then of the ffn, per frame
        table = self.scale_shift_table + tokens.modulation

        def per_token(index: int) -> torch.Tensor:
            """One of the six, [B, F, dim] -> [B, S, dim], gathered only when it is used."""
            return _per_token(table[:, :, index], tokens.frame_index)

        dtype = x.dtype
        normed = (self.norm1(x.float()) * (1 + per_token(1)) + per_token(0)).to(dtype)
        attn_out, kv = self.attn1(normed, tokens, past, attend)
        x = (x.float() + attn_out * per_token(2)).to(dtype)

        x = x + self.attn2(self.norm2(x.float()).to(dtype), tokens.text, attend)

        normed = (self.norm3(x.float()) * (1 + per_token(4)) + per_token(3)).to(dtype)
        x = (x.float() + self.ffn(normed).float() * per_token(5)).to(dtype)
        return x, kv


class WanDiT(nn.Module):
    """Wan DiT predicting the flow velocity (noise - x0) of latents `[B, C, F, H, W]`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim, patch = cfg.dim, tuple(cfg.patch_size)
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=patch, stride=patch)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=dim, time_freq_dim=cfg.freq_dim, time_proj_dim=dim * 6, text_embed_dim=cfg.text_dim)
        self.blocks = nn.ModuleList([WanBlock(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, cfg.out_channels * math.prod(patch))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)
        self.rope = RotaryEmbedding3D(cfg.head_dim, cfg.rope_theta)
        self.attention_fn: AttentionFn = get_attention_backend(cfg.attention_backend)
        self.gradient_checkpointing = False

    def set_attention(self, attention_fn: AttentionFn) -> None:
        """Replace the local attention of every block (e.g. by a context-parallel wrapper)."""
        self.attention_fn = attention_fn

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *,
                frame_positions: torch.Tensor | None = None, memory: MemoryView | None = None,
                num_frames_per_block: int | None = None, frame_blocks: torch.Tensor | None = None,
                return_kv: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[KV]]:
        """Predict the velocity for `latents [B, C, F, H, W]` at `timestep` (`[B]` or per frame `[B, F]`)
        given `text [B, L, text_dim]`.

        - `num_frames_per_block`: block-causal attention over chunks of that many frames
          (None: bidirectional, the teacher and the critic).
        - `frame_blocks [F]`: block-causal attention with an explicit block per frame instead (a frame
          sees the frames of blocks <= its own), e.g. cached frames grouped by the chunk they came in.
        - `memory`: attend to these cached frames too; the input's RoPE time positions then
          come from the memory unless `frame_positions` is given.
        - `return_kv`: also return each layer's un-rotated (k, v) of the input, for the memory.
        """
        if frame_positions is None and memory is not None:
            frame_positions = memory.query_frame_positions
        tokens = self.embed(latents, timestep, text, frame_positions, num_frames_per_block, frame_blocks)
        hidden, kv = self.run_blocks(tokens, memory, return_kv=return_kv)
        out = self.unpatchify(self.head(hidden, tokens), tokens.grid)
        return (out, kv) if return_kv else out

    def embed(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
              frame_positions: torch.Tensor | None = None, num_frames_per_block: int | None = None,
              frame_blocks: torch.Tensor | None = None, token_index: torch.Tensor | None = None) -> TokenBatch:
        """Tokens of `latents [B, C, F, H, W]`; with `token_index [s]` (positions in the
        (frame, row, column) token order) only those tokens, with their RoPE angles and frames."""
        batch, _, frames, height, width = latents.shape
        _, patch_h, patch_w = self.cfg.patch_size
        grid_h, grid_w = height // patch_h, width // patch_w
        if height % patch_h or width % patch_w:
            raise ValueError(f"latent size {height}x{width} is not divisible by patch {self.cfg.patch_size}")
        device = latents.device
        if frame_positions is None:
            frame_positions = torch.arange(frames, device=device)
        if frame_positions.shape != (frames,):
            raise ValueError(f"frame_positions has shape {tuple(frame_positions.shape)}, expected ({frames},)")

        tokens_per_frame = grid_h * grid_w
        if token_index is None:
            # the patch embedding gives [B, dim, F, gh, gw]; tokens run frame by frame, row by row
            hidden = rearrange(self.patch_embedding(latents), "b c f h w -> b (f h w) c").contiguous()
            frame_index = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)
        else:
            token_index = token_index.to(device)
            hidden = self._embed_patches(latents, token_index)
            frame_index = token_index // tokens_per_frame
        per_frame_t = timestep[:, None].expand(batch, frames) if timestep.ndim == 1 else timestep
        if per_frame_t.shape != (batch, frames):
            raise ValueError(f"timestep has shape {tuple(timestep.shape)}; give [B] or [B, F] = [{batch}, {frames}]")
        temb, time_proj, text_proj, _ = self.condition_embedder(
            per_frame_t.flatten(), text, timestep_seq_len=frames)
        modulation = rearrange(time_proj.float(), "b f (six c) -> b f six c", six=6)  # shift/scale/gate x 2

        cos, sin = self.rope.angles(frame_positions.to(device), grid_h, grid_w, token_index)
        query_blocks = None
        if frame_blocks is not None:
            if frame_blocks.shape != (frames,):
                raise ValueError(f"frame_blocks has shape {tuple(frame_blocks.shape)}, expected ({frames},)")
            query_blocks = frame_blocks.to(device).index_select(0, frame_index)
        elif num_frames_per_block is not None and frames > num_frames_per_block:
            query_blocks = frame_index // num_frames_per_block
        return TokenBatch(hidden=hidden, frame_index=frame_index, rope_cos=cos, rope_sin=sin,
                          query_blocks=query_blocks, modulation=modulation, head_modulation=temb.float(),
                          text=text_proj, grid=(frames, grid_h, grid_w))

    def rotate_memory(self, memory: MemoryView, latent_height: int, latent_width: int) -> MemoryView:
        """The same view with every layer's cached keys rotated to their positions, once.

        The memory stores keys un-rotated because a frame's position can change between chunks;
        within a chunk it does not, so the generator rotates once per chunk and its denoising
        passes and refresh pass reuse the result instead of each rotating every layer again."""
        if memory.keys_rotated or not memory.num_cached_frames:
            return memory
        _, patch_h, patch_w = self.cfg.patch_size
        angles = self._memory_angles(memory, latent_height // patch_h, latent_width // patch_w)
        return replace(memory, keys=[apply_rope(k, *angles) for k in memory.keys], keys_rotated=True)

    def _memory_angles(self, memory: MemoryView, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = memory.keys[0].device
        return self.rope.angles(memory.key_frame_positions.to(device), grid_h, grid_w)

    def _embed_patches(self, latents: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
        """`[B, s, dim]`: the patch embedding of the tokens `token_index` only (the same convolution,
        run on a batch of single patches, so ZeRO-3 still gathers its weights on call)."""
        batch = latents.shape[0]
        patch_t, patch_h, patch_w = self.cfg.patch_size
        # [B, C, F*pt, gh*ph, gw*pw] -> [B, F*gh*gw, C, pt, ph, pw], then this shard's tokens
        patches = rearrange(latents, "b c (f pt) (gh ph) (gw pw) -> b (f gh gw) c pt ph pw",
                            pt=patch_t, ph=patch_h, pw=patch_w).index_select(1, token_index)
        # [B*s, C, pt, ph, pw] -> [B*s, dim, 1, 1, 1] -> [B, s, dim]
        return self.patch_embedding(patches.flatten(0, 1)).reshape(batch, len(token_index), -1)

    def run_blocks(self, tokens: TokenBatch, memory: MemoryView | None = None,
                   return_kv: bool = False) -> tuple[torch.Tensor, list[KV]]:
        """The blocks over `tokens`; each layer's (k, v) of the input is kept only with `return_kv`
        (a caller that does not store them should not hold L of them)."""
        has_past = memory is not None and memory.num_cached_frames > 0
        past_angles = None
        if has_past and not memory.keys_rotated:  # rotated here, one layer at a time
            _, grid_h, grid_w = tokens.grid
            past_angles = self._memory_angles(memory, grid_h, grid_w)
        hidden, kv_out = tokens.hidden, []
        for layer, block in enumerate(self.blocks):
            past = None
            if has_past:
                k_past = memory.keys[layer]
                if past_angles is not None:
                    k_past = apply_rope(k_past, *past_angles)
                past = (k_past, memory.values[layer])
            if self.gradient_checkpointing and torch.is_grad_enabled():
                hidden, kv = torch.utils.checkpoint.checkpoint(
                    block, hidden, tokens, past, self.attention_fn, use_reentrant=False)
            else:
                hidden, kv = block(hidden, tokens, past, self.attention_fn)
            if return_kv:
                kv_out.append(kv)
        return hidden, kv_out

    def head(self, hidden: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
        """The output head per token: `[B, s, dim]` -> `[B, s, ph*pw*C]` output patches."""
        # [1, 2, dim] + [B, F, 1, dim] -> shift, scale [B, F, dim] -> per token [B, s, dim]
        shift, scale = (self.scale_shift_table + tokens.head_modulation[:, :, None]).unbind(2)
        shift, scale = _per_token(shift, tokens.frame_index), _per_token(scale, tokens.frame_index)
        return self.proj_out((self.norm_out(hidden.float()) * (1 + scale) + shift).to(hidden.dtype))

    def unpatchify(self, patches: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """`[B, F*gh*gw, ph*pw*C]` output patches of every token -> latents `[B, C, F, H, W]`."""
        return unpatchify(patches, grid, tuple(self.cfg.patch_size[1:]))


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int]) -> torch.Tensor:
    """`[B, F*gh*gw, ph*pw*C]` (the output head's layout) -> `[B, C, F, gh*ph, gw*pw]`."""
    frames, grid_h, grid_w = grid
    return rearrange(patches, "b (f gh gw) (ph pw c) -> b c f (gh ph) (gw pw)",
                     f=frames, gh=grid_h, gw=grid_w, ph=patch[0], pw=patch[1])


def patchify(latents: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """The inverse of `unpatchify`: `[B, C, F, H, W]` -> `[B, F*gh*gw, ph*pw*C]`, so a target can be
    compared with output patches token by token."""
    return rearrange(latents, "b c f (gh ph) (gw pw) -> b (f gh gw) (ph pw c)", ph=patch[0], pw=patch[1])
