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

    def angles(self, frame_positions: torch.Tensor, grid_height: int, grid_width: int) -> tuple[torch.Tensor, ...]:
        """cos and sin `[num_frames * grid_height * grid_width, head_dim // 2]`, float32, tokens in
        (frame, row, column) order."""
        device = frame_positions.device
        t_pos = frame_positions.to(torch.float64)
        h_pos = torch.arange(grid_height, dtype=torch.float64, device=device)
        w_pos = torch.arange(grid_width, dtype=torch.float64, device=device)
        t_ang, h_ang, w_ang = (torch.outer(pos, inv.to(device)) for pos, inv in
                               zip((t_pos, h_pos, w_pos), self.inv_freqs))
        frames, half = len(t_pos), sum(d // 2 for d in self.axis_dims)
        # per-axis angles broadcast to [F, gh, gw, d_axis/2], concatenated to [F, gh, gw, head_dim/2]
        grid = torch.cat([
            t_ang[:, None, None, :].expand(frames, grid_height, grid_width, -1),
            h_ang[None, :, None, :].expand(frames, grid_height, grid_width, -1),
            w_ang[None, None, :, :].expand(frames, grid_height, grid_width, -1),
        ], dim=-1).reshape(frames * grid_height * grid_width, half)
        return grid.cos().float(), grid.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of `x [B, S, H, D]` by angles `[S, D/2]`; computed in float32."""
    dtype = x.dtype
    # [B, S, H, D] -> [B, S, H, D/2, 2] -> two [B, S, H, D/2] halves of each pair
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    # two [B, S, H, D/2] -> [B, S, H, D/2, 2] -> [B, S, H, D]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).to(dtype)
