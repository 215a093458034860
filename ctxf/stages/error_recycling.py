"""Error recycling (from Stable Video Infinity's error-recycling fine-tuning): the teacher learns
to tolerate imperfect history by training on its own mistakes.

Every training step pushes the model's x0 prediction errors (predicted - true, one latent frame
at a time) into the buffer of the step's timestep bin (a ring of `capacity` frames per bin).
Injection draws them back:
- context: with probability `context_prob` per sample, every context frame gets one stored
  error added, drawn from a uniformly chosen non-empty bin (generated history carries errors of
  every size);
- noise: with probability `noise_prob` per sample, every target frame's noise gets an error
  from the bin of that sample's own timestep (when that bin holds any).
The supervision target stays the clean velocity, so the model learns to steer back.
Buffers are per rank (every rank of a context-parallel group holds the same ones).
"""

from __future__ import annotations

import torch


class ErrorBuffer:
    def __init__(self, num_bins: int, capacity: int, num_train_timesteps: float = 1000.0):
        self.num_bins, self.capacity, self.total = num_bins, capacity, float(num_train_timesteps)
        self.frames: list[list[torch.Tensor]] = [[] for _ in range(num_bins)]  # per bin: [C, H, W] errors
        self.next_slot = [0] * num_bins

    def bin_of(self, timestep: float) -> int:
        return min(int(timestep / self.total * self.num_bins), self.num_bins - 1)

    def push(self, timesteps: torch.Tensor, errors: torch.Tensor) -> None:
        """`errors [B, C, F, H, W]` of samples at `timesteps [B]`, each frame into its sample's bin."""
        errors = errors.detach().float().cpu()
        for sample, timestep in enumerate(timesteps.tolist()):
            index = self.bin_of(timestep)
            for frame in errors[sample].unbind(1):
                self._store(index, frame.clone())

    def _store(self, index: int, frame: torch.Tensor) -> None:
        ring = self.frames[index]
        if len(ring) < self.capacity:
            ring.append(frame)
        else:
            ring[self.next_slot[index]] = frame
        self.next_slot[index] = (self.next_slot[index] + 1) % self.capacity

    def draw(self, index: int, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` stored errors of bin `index`, uniformly with replacement: `[C, count, H, W]`."""
        ring = self.frames[index]
        picks = torch.randint(len(ring), (count,), generator=generator).tolist()
        return torch.stack([ring[i] for i in picks], dim=1)

    def nonempty_bins(self) -> list[int]:
        return [i for i, ring in enumerate(self.frames) if ring]

    def inject_context(self, context: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
        """`context [B, C, F, H, W]` with errors added to the chosen samples."""
        bins = self.nonempty_bins()
        out = context.clone()
        for sample in range(context.shape[0]):
            chosen = bool(torch.rand((), generator=generator) < prob)
            if chosen and bins and context.shape[2]:
                index = bins[int(torch.randint(len(bins), (1,), generator=generator))]
                out[sample] += self.draw(index, context.shape[2], generator).to(context)
        return out

    def inject_noise(self, noise: torch.Tensor, timesteps: torch.Tensor, prob: float,
                     generator: torch.Generator) -> torch.Tensor:
        """`noise [B, C, F, H, W]` with each chosen sample's timestep-bin errors added."""
        out = noise.clone()
        for sample, timestep in enumerate(timesteps.tolist()):
            chosen = bool(torch.rand((), generator=generator) < prob)
            index = self.bin_of(timestep)
            if chosen and self.frames[index]:
                out[sample] += self.draw(index, noise.shape[2], generator).to(noise)
        return out

    def state_dict(self) -> dict:
        return {"frames": [list(ring) for ring in self.frames], "next_slot": list(self.next_slot)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["frames"]) != self.num_bins:
            raise ValueError(f"error buffers were saved with {len(state['frames'])} bins, this run has "
                             f"{self.num_bins} (teacher.num_error_bins)")
        self.frames = [list(ring) for ring in state["frames"]]
        self.next_slot = list(state["next_slot"])
