"""Streaming generation: a chunk at a time, few-step denoising against the memory.

For every chunk of `num_frames_per_block` latent frames:
1. `memory.view()` gives the cached keys/values and the RoPE positions of cached and new frames;
   the cached keys are rotated to their positions once (`WanDiT.rotate_memory`), since the
   positions hold for the whole chunk;
2. the chunk is denoised from noise through the few-step schedule (x0 prediction, then re-noised
   with fresh noise to the next timestep, as Self-Forcing samples);
3. one more pass at the context-noise timestep (0: clean) computes the chunk's keys/values,
   which `memory.append()` stores (with the latents that pass read) and the memory's policy
   may later evict.

When the prompt changes, `recache()` recomputes the keys/values of every cached frame under the
new prompt from the latents the memory kept (LongLive's re-cache), so the scene can change
without a cut; `flush()` empties the memory instead (a cut).

Training rolls the student out through this same `generate_chunk` (ctxf.stages.rollout): a chunk
may stop at an earlier `exit_step` of the schedule and keep the autograd graph of that one
forward (`with_grad`); every other forward, and the refresh pass, runs without gradient.
Inference is the case exit_step = last, with_grad = False.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ctxf.config import DiffusionConfig
from ctxf.memory.cache import KVMemory
from ctxf.models.flow_matching import add_noise, predict_x0, sampling_timesteps
from ctxf.models.wan import WanDiT


@dataclass
class ChunkStats:
    index: int
    first_frame: int
    num_frames: int
    seconds: float
    cache_bytes: int
    num_cached_frames: int
    max_rope_position: int


@dataclass
class StreamingGenerator:
    model: WanDiT
    memory: KVMemory
    diffusion: DiffusionConfig
    num_frames_per_block: int
    stats: list[ChunkStats] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.timesteps = sampling_timesteps(self.diffusion)
        self.total = float(self.diffusion.num_train_timesteps)
        self.num_frames = 0  # latent frames prefilled or generated so far (a flush does not rewind it)

    def reset(self) -> None:
        self.memory.reset()
        self.stats = []
        self.num_frames = 0

    def flush(self) -> None:
        """Forget every cached frame: the next chunk starts as a new shot, at position 0."""
        self.memory.reset()

    @torch.no_grad()
    def recache(self, text: torch.Tensor) -> int:
        """Recompute the keys/values of every cached frame under `text`; returns how many frames.

        One clean pass over the latents the memory kept, at the RoPE positions the next chunk will
        see them at, block-causal by the chunk each frame came in (as their refresh passes were),
        so the cache becomes what a fresh pass of those frames under the new prompt computes."""
        if not self.memory.frames:
            return 0
        latents, blocks = self.memory.held_latents()
        view = self.memory.view(self.num_frames_per_block)
        timestep = torch.full((latents.shape[0],), float(self.diffusion.context_noise), device=latents.device)
        _, kv = self.model(latents, timestep, text, frame_positions=view.key_frame_positions,
                           frame_blocks=torch.tensor(blocks), return_kv=True)
        self.memory.overwrite(kv)
        return latents.shape[2]

    @torch.no_grad()
    def prefill(self, latents: torch.Tensor, text: torch.Tensor) -> None:
        """Write clean latents `[B, C, F, H, W]` (a clip to continue) into memory, chunk by chunk."""
        for start in range(0, latents.shape[2], self.num_frames_per_block):
            chunk = latents[:, :, start:start + self.num_frames_per_block]
            view = self.model.rotate_memory(self.memory.view(chunk.shape[2]), *chunk.shape[3:])
            self._refresh(chunk, text, view)

    def predict(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x0 `[B, C, F, H, W]` the model predicts for the next chunk's noisy latents `x` at `timestep` `[B]`
        against the memory, with autograd as the caller has it (ODE initialisation trains through it)."""
        view = self.model.rotate_memory(self.memory.view(x.shape[2]), *x.shape[3:])
        return predict_x0(x, self.model(x, timestep, text, memory=view), timestep / self.total)

    def generate_chunk(self, text: torch.Tensor, latent_shape: tuple[int, int, int], generator: torch.Generator,
                       exit_step: int | None = None, with_grad: bool = False) -> torch.Tensor:
        """Denoise the next chunk; returns its clean latents `[B, C, num_frames_per_block, H, W]`.

        `exit_step`: index into the few-step schedule whose x0 prediction is the chunk (None: the
        last step). `with_grad`: that one forward keeps its autograd graph."""
        started = time.perf_counter()
        batch = text.shape[0]
        channels, height, width = latent_shape
        frames = self.num_frames_per_block
        param = next(self.model.parameters())
        view = self.model.rotate_memory(self.memory.view(frames), height, width)
        last = len(self.timesteps) - 1 if exit_step is None else exit_step

        def noise() -> torch.Tensor:
            sample = torch.randn(batch, channels, frames, height, width, generator=generator)
            return sample.to(device=param.device, dtype=param.dtype)

        x = noise()
        for step, timestep in enumerate(self.timesteps[:last + 1]):
            t = torch.full((batch,), timestep, device=param.device)
            with torch.set_grad_enabled(with_grad and step == last):
                x0 = predict_x0(x, self.model(x, t, text, memory=view), t / self.total)
            if step < last:
                x = add_noise(x0, noise(), torch.full((batch,), self.timesteps[step + 1] / self.total,
                                                      device=param.device))
        first_frame = self.num_frames
        self._refresh(x0.detach(), text, view)
        positions = torch.cat([view.key_frame_positions, view.query_frame_positions])
        self.stats.append(ChunkStats(index=len(self.stats), first_frame=first_frame, num_frames=frames,
                                     seconds=time.perf_counter() - started,
                                     cache_bytes=self.memory.cache_bytes(),
                                     num_cached_frames=view.num_cached_frames,
                                     max_rope_position=int(positions.max())))
        return x0

    def stream(self, num_frames: int, text: torch.Tensor, latent_shape: tuple[int, int, int],
               seed: int = 0) -> Iterator[torch.Tensor]:
        """Yield chunks until `num_frames` latent frames exist (the last chunk may be trimmed)."""
        generator = torch.Generator().manual_seed(seed)
        produced = 0
        while produced < num_frames:
            chunk = self.generate_chunk(text, latent_shape, generator)
            keep = min(chunk.shape[2], num_frames - produced)
            produced += keep
            yield chunk[:, :, :keep]

    @torch.no_grad()
    def _refresh(self, clean: torch.Tensor, text: torch.Tensor, view) -> None:
        batch, frames = clean.shape[0], clean.shape[2]
        context_t = torch.full((batch,), float(self.diffusion.context_noise), device=clean.device)
        context = clean
        if self.diffusion.context_noise > 0:
            context = add_noise(clean, torch.randn_like(clean), context_t / self.total)
        _, kv = self.model(context, context_t, text, memory=view, return_kv=True)
        self.memory.append(kv, frames, latents=context)
        self.num_frames += frames
