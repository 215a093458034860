"""What the teacher and the critic see before the DMD window: `[clean context | window]` and the
RoPE time position of every frame of it.

- `none`: no context; the window at positions 0 .. W-1 (a history-blind, short teacher: local
  DMD, Self-Forcing, LongLive).
- `memory`: the frames the student's memory held right before the window (sink, slow keyframes,
  fast window, in that order), at the positions the memory reports for them and for the window.
- `contiguous`: the `n` frames right before the window, positions 0 .. n+W-1.
- `full`: the whole history, positions 0 .. F-1 (the absolute frame indices); long, so it is
  only practical with the sequence sharded over a context-parallel group.
The context frames are the rollout's own generated latents, detached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctxf.stages.rollout import Rollout


@dataclass
class ScoredInput:
    context: torch.Tensor  # [B, C, N, H, W] clean context latents (N may be 0)
    positions: torch.Tensor  # [N + W] RoPE time positions of [context | window]

    @property
    def num_context(self) -> int:
        return self.context.shape[2]


def scored_input(rollout: Rollout, mode: str, contiguous_frames: int = 0) -> ScoredInput:
    history = rollout.history.detach()
    window = rollout.window.shape[2]
    start = rollout.window_start
    if mode == "none":
        return ScoredInput(history[:, :, :0], torch.arange(window))
    if mode == "memory":
        snapshot = rollout.memory
        context = history[:, :, snapshot.frame_indices]
        return ScoredInput(context, torch.cat([snapshot.key_positions, snapshot.window_positions]))
    if mode == "contiguous":
        count = min(contiguous_frames, start)
        return ScoredInput(history[:, :, start - count:], torch.arange(count + window))
    if mode == "full":
        return ScoredInput(history, torch.arange(start + window))
    raise ValueError(f"teacher context {mode!r}: choose none, memory, contiguous or full")
