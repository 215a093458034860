"""The student's training rollout: it generates a video chunk by chunk through its memory with
`StreamingGenerator.generate_chunk`, the function `ctxf-generate` streams with (one code path).

- Each chunk exits at one step of the few-step schedule, drawn from a generator every rank
  shares (`Runtime.shared_generator`), so all ranks run the same number of forwards.
- Only the chunks of the last window (the DMD target) keep the autograd graph, and only of
  their exit step; earlier chunks, earlier steps and the memory's refresh passes run without it.
- A rollout may continue a clip: `prefix` (clean latents of its first frames) is written into the
  memory first (`StreamingGenerator.prefill`, as `ctxf-generate --prefix-video` does) and counts as
  history, so the teacher's context can hold real frames as well as generated ones.
- Just before the window's first chunk, the rollout records what the student's memory holds:
  the absolute frame indices in attention order, each frame's segment, and the RoPE positions
  of those frames and of the window (`memory.view(window)`); a context-seeing teacher is given
  exactly that (ctxf.stages.teacher_context).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctxf.inference.generator import StreamingGenerator


@dataclass
class MemorySnapshot:
    frame_indices: list[int]  # cached frames in attention order (absolute latent-frame indices)
    segments: list[str]  # sink | slow | fast | window, per cached frame
    key_positions: torch.Tensor  # [num_cached] RoPE time positions of the cached frames
    window_positions: torch.Tensor  # [window] RoPE time positions of the window's frames


@dataclass
class Rollout:
    history: torch.Tensor  # [B, C, window_start, H, W] the prefix and the chunks before the window (never a graph)
    window: torch.Tensor  # [B, C, window, H, W] the DMD window's chunks (their exit steps' graph)
    exit_steps: list[int]  # per chunk, index into the few-step schedule
    memory: MemorySnapshot  # the memory right before the window

    @property
    def window_start(self) -> int:
        return self.history.shape[2]

    @property
    def latents(self) -> torch.Tensor:
        """[B, C, F, H, W] every generated frame."""
        return torch.cat([self.history, self.window], dim=2)


def draw_exit_steps(num_chunks: int, num_steps: int, shared: torch.Generator) -> list[int]:
    """One exit step per chunk, uniform over the schedule; `shared` draws alike on every rank."""
    return [int(i) for i in torch.randint(num_steps, (num_chunks,), generator=shared)]


def roll_out(generator: StreamingGenerator, text: torch.Tensor, latent_shape: tuple[int, int, int],
             num_frames: int, window_frames: int, noise: torch.Generator, exit_steps: list[int],
             keep_graph: bool = True, prefix: torch.Tensor | None = None) -> Rollout:
    """Generate `num_frames` latent frames after `prefix` (`[B, C, P, H, W]` clean latents, whole
    chunks; None: from an empty memory); the last `window_frames` train (when `keep_graph`; a
    critic-only step needs no graph at all).

    Both counts are whole chunks; `exit_steps` has one entry per chunk (`draw_exit_steps`)."""
    block = generator.num_frames_per_block
    if num_frames % block or window_frames % block or not 0 < window_frames <= num_frames:
        raise ValueError(f"rollout of {num_frames} frames with a window of {window_frames}: both must be whole "
                         f"chunks of {block} frames and the window no longer than the rollout")
    num_chunks = num_frames // block
    if len(exit_steps) != num_chunks:
        raise ValueError(f"{len(exit_steps)} exit steps for {num_chunks} chunks")
    if prefix is not None and prefix.shape[2] % block:
        raise ValueError(f"a rollout prefix of {prefix.shape[2]} frames is not whole chunks of {block} frames")
    window_start = num_frames - window_frames
    generator.reset()
    chunks, snapshot = [], None
    if prefix is not None and prefix.shape[2]:
        param = next(generator.model.parameters())
        prefix = prefix.to(device=param.device, dtype=param.dtype)
        generator.prefill(prefix, text)
        chunks.append(prefix)
    num_prefix_chunks = len(chunks)
    for index, exit_step in enumerate(exit_steps):
        first_frame = index * block
        if first_frame == window_start:
            snapshot = _snapshot(generator, window_frames)
        chunks.append(generator.generate_chunk(text, latent_shape, noise, exit_step=exit_step,
                                               with_grad=keep_graph and first_frame >= window_start))
    history_chunks = num_prefix_chunks + window_start // block
    return Rollout(history=torch.cat(chunks[:history_chunks], dim=2) if history_chunks
                   else chunks[0][:, :, :0].detach(),
                   window=torch.cat(chunks[history_chunks:], dim=2), exit_steps=list(exit_steps), memory=snapshot)


def _snapshot(generator: StreamingGenerator, window_frames: int) -> MemorySnapshot:
    memory = generator.memory
    view = memory.view(window_frames)
    return MemorySnapshot(frame_indices=memory.frame_indices, segments=memory.segments,
                          key_positions=view.key_frame_positions.clone(),
                          window_positions=view.query_frame_positions.clone())


@torch.no_grad()
def stream_sample(generator: StreamingGenerator, text: torch.Tensor, cfg) -> torch.Tensor:
    """[1, C, window, H, W] for the training logs: the student streams `distill.window_frames`
    frames for `text` (one prompt) with the training seed; every rank runs it (ZeRO-3 gathers)."""
    generator.reset()
    shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
    chunks = list(generator.stream(cfg.distill.window_frames, text, shape, seed=cfg.train.seed))
    return torch.cat(chunks, dim=2).float().cpu()
