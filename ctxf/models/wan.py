"""A Wan2.1-style diffusion transformer with bidirectional and block-causal (KV-cached) attention.

Parameter names match diffusers' `WanTransformer3DModel`, so its `save_pretrained` checkpoints
load as they are (`ctxf.ckpt.wan_keys` maps Wan's original names). diffusers' condition
embedder and feed-forward are used as they are; the attention, block and model forward are our
own because diffusers' Wan cannot take a KV cache, a block-causal mask or RoPE positions chosen
by a memory, and the student needs all three.

The forward is split in three stages (`embed`, `run_blocks`, `unembed`) so that context
parallelism can shard the token sequence between them from outside (`ctxf.parallel`) without a
single distributed line in here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from diffusers.models.attention import FeedForward
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
    grid: tuple[int, int, int]  # (frames, grid_height, grid_width) of the input

    def select_tokens(self, index: torch.Tensor) -> "TokenBatch":
        """The same batch restricted to the tokens `index` (a shard, for context parallelism)."""
        return replace(self, hidden=self.hidden[:, index], frame_index=self.frame_index[index],
                       rope_cos=self.rope_cos[index], rope_sin=self.rope_sin[index],
                       query_blocks=None if self.query_blocks is None else self.query_blocks[index])


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
        hidden, kv = self.run_blocks(tokens, memory)
        out = self.unembed(hidden, tokens)
        return (out, kv) if return_kv else out

    def embed(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
              frame_positions: torch.Tensor | None = None, num_frames_per_block: int | None = None,
              frame_blocks: torch.Tensor | None = None) -> TokenBatch:
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

        # the patch embedding gives [B, dim, F, gh, gw]; tokens run frame by frame, row by row
        hidden = rearrange(self.patch_embedding(latents), "b c f h w -> b (f h w) c").contiguous()
        per_frame_t = timestep[:, None].expand(batch, frames) if timestep.ndim == 1 else timestep
        if per_frame_t.shape != (batch, frames):
            raise ValueError(f"timestep has shape {tuple(timestep.shape)}; give [B] or [B, F] = [{batch}, {frames}]")
        temb, time_proj, text_proj, _ = self.condition_embedder(
            per_frame_t.flatten(), text, timestep_seq_len=frames)
        modulation = rearrange(time_proj.float(), "b f (six c) -> b f six c", six=6)  # shift/scale/gate x 2

        tokens_per_frame = grid_h * grid_w
        frame_index = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)
        cos, sin = self.rope.angles(frame_positions.to(device), grid_h, grid_w)
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

    def run_blocks(self, tokens: TokenBatch, memory: MemoryView | None = None) -> tuple[torch.Tensor, list[KV]]:
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
            kv_out.append(kv)
        return hidden, kv_out

    def unembed(self, hidden: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
        frames, grid_h, grid_w = tokens.grid
        # [1, 2, dim] + [B, F, 1, dim] -> shift, scale [B, F, dim] -> per token [B, S, dim]
        shift, scale = (self.scale_shift_table + tokens.head_modulation[:, :, None]).unbind(2)
        shift, scale = _per_token(shift, tokens.frame_index), _per_token(scale, tokens.frame_index)
        out = self.proj_out((self.norm_out(hidden.float()) * (1 + scale) + shift).to(hidden.dtype))
        _, patch_h, patch_w = self.cfg.patch_size
        # each token's ph * pw * C outputs are its patch of latent pixels, channels last
        return rearrange(out, "b (f gh gw) (ph pw c) -> b c f (gh ph) (gw pw)", f=frames, gh=grid_h, gw=grid_w,
                         ph=patch_h, pw=patch_w)
