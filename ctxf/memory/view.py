"""What a memory hands the model for one forward: cached keys/values and RoPE positions."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MemoryView:
    keys: list[torch.Tensor]  # per layer [B, num_cached_frames * frame_seq_len, H, D]
    values: list[torch.Tensor]  # per layer, same shape as keys
    key_frame_positions: torch.Tensor  # [num_cached_frames] RoPE time position of each cached frame
    query_frame_positions: torch.Tensor  # [num_query_frames] RoPE time position of each new frame
    keys_rotated: bool = False  # keys already rotated to key_frame_positions (`WanDiT.rotate_memory`)

    @property
    def num_cached_frames(self) -> int:
        return int(self.key_frame_positions.numel())
