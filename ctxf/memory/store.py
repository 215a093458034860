"""Preallocated storage of per-layer keys and values for whole latent frames.

One tensor `[2 (k, v), layers, B, capacity, frame_seq_len, H, D]` holds every cached frame in
attention order; a layer's view is a slice, never a copy. Bounded policies give a fixed
capacity, so the bytes held stay flat however long the video; full history grows by doubling.
The store knows nothing about which frames to keep: `keep()` takes the policy's answer.
"""

from __future__ import annotations

import torch


class FrameKVStore:
    def __init__(self, num_layers: int, capacity_frames: int | None):
        self.num_layers = num_layers
        self.fixed_capacity = capacity_frames
        self.buffer: torch.Tensor | None = None
        self.num_frames = 0

    def reset(self) -> None:
        self.num_frames = 0

    def append(self, kv: list[tuple[torch.Tensor, torch.Tensor]], num_frames: int) -> None:
        """Add `num_frames` frames at the end; `kv` holds per layer (k, v) `[B, num_frames * S_f, H, D]`."""
        if len(kv) != self.num_layers:
            raise ValueError(f"memory holds {self.num_layers} layers, got keys for {len(kv)}")
        k0 = kv[0][0]
        batch, tokens, heads, head_dim = k0.shape
        if tokens % num_frames:
            raise ValueError(f"{tokens} tokens are not {num_frames} whole frames")
        frame_shape = (batch, tokens // num_frames, heads, head_dim)
        self._ensure_room(self.num_frames + num_frames, frame_shape, k0.dtype, k0.device)
        start, end = self.num_frames, self.num_frames + num_frames
        for layer, (k, v) in enumerate(kv):
            # [B, n*S_f, H, D] -> [B, n, S_f, H, D] into the frame slots
            self.buffer[0, layer, :, start:end] = k.detach().reshape(batch, num_frames, *frame_shape[1:])
            self.buffer[1, layer, :, start:end] = v.detach().reshape(batch, num_frames, *frame_shape[1:])
        self.num_frames = end

    def overwrite(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Replace the keys and values of every held frame, same frames in the same order;
        `kv` holds per layer (k, v) `[B, num_frames * S_f, H, D]`."""
        if len(kv) != self.num_layers or kv[0][0].shape[1] % max(self.num_frames, 1):
            raise ValueError(f"overwrite needs {self.num_layers} layers of {self.num_frames} whole frames")
        for layer, (k, v) in enumerate(kv):
            # [B, n*S_f, H, D] -> [B, n, S_f, H, D] into the frame slots
            self.buffer[0, layer, :, : self.num_frames] = k.detach().unflatten(1, (self.num_frames, -1))
            self.buffer[1, layer, :, : self.num_frames] = v.detach().unflatten(1, (self.num_frames, -1))

    def keep(self, slots: list[int]) -> None:
        """Keep only these frame slots (ascending), moved to the front in the same order."""
        if slots == list(range(self.num_frames)):
            return
        if any(b <= a for a, b in zip(slots, slots[1:])) or (slots and slots[-1] >= self.num_frames):
            raise ValueError(f"slots to keep must ascend within [0, {self.num_frames}), got {slots}")
        if slots:
            index = torch.tensor(slots, device=self.buffer.device)
            self.buffer[:, :, :, : len(slots)] = self.buffer.index_select(3, index)
        self.num_frames = len(slots)

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) of one layer, `[B, num_frames * S_f, H, D]` views of the buffer."""
        k = self.buffer[0, layer, :, : self.num_frames]
        v = self.buffer[1, layer, :, : self.num_frames]
        # [B, n, S_f, H, D] -> [B, n*S_f, H, D]
        return k.flatten(1, 2), v.flatten(1, 2)

    def allocated_bytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel() * self.buffer.element_size()

    def used_bytes(self) -> int:
        if self.buffer is None:
            return 0
        return self.allocated_bytes() // self.buffer.shape[3] * self.num_frames

    def _ensure_room(self, frames: int, frame_shape: tuple, dtype: torch.dtype, device: torch.device) -> None:
        if self.buffer is not None and tuple(self.buffer.shape[2:3] + self.buffer.shape[4:]) != frame_shape:
            raise ValueError(f"frame shape changed from {tuple(self.buffer.shape[2:3] + self.buffer.shape[4:])} "
                             f"to {frame_shape}; call reset() on a new memory for a new geometry")
        capacity = 0 if self.buffer is None else self.buffer.shape[3]
        if frames <= capacity:
            return
        if self.fixed_capacity is not None:
            new_capacity = self.fixed_capacity
            if frames > new_capacity:
                raise ValueError(f"memory capacity is {new_capacity} frames; cannot hold {frames}")
        else:
            new_capacity = max(frames, 2 * capacity)
        batch, tokens, heads, head_dim = frame_shape
        grown = torch.empty(2, self.num_layers, batch, new_capacity, tokens, heads, head_dim,
                            dtype=dtype, device=device)
        if self.buffer is not None and self.num_frames:
            grown[:, :, :, : self.num_frames] = self.buffer[:, :, :, : self.num_frames]
        self.buffer = grown
