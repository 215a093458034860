"""3D rotary position embedding over (t, h, w), computed from explicit positions.

Wan splits each head's channels t:h:w = d - 4*(d//6) : 2*(d//6) : 2*(d//6) and rotates adjacent
channel pairs (x[2i], x[2i+1]). diffusers precomputes a table for positions 0..1023 and slices
it by token order; here the time position of every frame is an argument, because the memory
decides it (bounded positions for Slow-Fast Memory, absolute ones for full history), and keys
are stored un-rotated so the same key can sit at a different position in a later chunk.
"""

from __future__ import annotations

import torch


class RotaryEmbedding3D:
    def __init__(self, head_dim: int, theta: float = 10000.0):
        spatial = 2 * (head_dim // 6)
        self.axis_dims = (head_dim - 2 * spatial, spatial, spatial)
        self.inv_freqs = [
            1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)) for dim in self.axis_dims
        ]

    def angles(self, frame_positions: torch.Tensor, grid_height: int, grid_width: int,
               token_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """cos and sin `[tokens, head_dim // 2]`, float32, for the tokens `token_index` of the
        (frame, row, column)-ordered grid (every token when None): a context-parallel rank asks
        only for its own tokens."""
        device = frame_positions.device
        per_frame = grid_height * grid_width
        if token_index is None:
            token_index = torch.arange(len(frame_positions) * per_frame, device=device)
        token_index = token_index.to(device)
        positions = (frame_positions.to(torch.float64)[token_index // per_frame],
                     ((token_index % per_frame) // grid_width).to(torch.float64),
                     (token_index % grid_width).to(torch.float64))
        # per-axis angles [tokens, d_axis/2], concatenated to [tokens, head_dim/2]
        grid = torch.cat([torch.outer(pos, inv.to(device)) for pos, inv in zip(positions, self.inv_freqs)], dim=-1)
        return grid.cos().float(), grid.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of `x [B, S, H, D]` by angles `[S, D/2]`; computed in float32."""
    dtype = x.dtype
    # [B, S, H, D] -> [B, S, H, D/2, 2] -> two [B, S, H, D/2] halves of each pair
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    # two [B, S, H, D/2] -> [B, S, H, D/2, 2] -> [B, S, H, D]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).to(dtype)
