"""Which frames of a clip make up one stage-0 teacher sequence [sink | slow | recent | target].

The target is a window of `num_target_frames`; `recent` are the frames right before it; the sink
the clip's first frames; `slow` samples the older history in between sparsely, one frame every
`slow_stride` going back from the recent frames, at most `num_slow_frames` (fewer when the
clip has no more history). The sequence is laid out in that order and RoPE positions are its
indices (0 .. length - 1), the compact layout the student's bounded memory presents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctxf.stages.config import TeacherStageConfig


@dataclass(frozen=True)
class ContextLayout:
    sink: list[int]
    slow: list[int]
    recent: list[int]
    target: list[int]

    @property
    def context(self) -> list[int]:
        return self.sink + self.slow + self.recent

    @property
    def frames(self) -> list[int]:
        """Clip frame indices in sequence order: context, then target."""
        return self.context + self.target

    @property
    def num_context(self) -> int:
        return len(self.context)


def min_clip_frames(cfg: TeacherStageConfig) -> int:
    return cfg.num_sink_frames + cfg.num_recent_frames + cfg.num_target_frames


def sample_layout(num_clip_frames: int, cfg: TeacherStageConfig, generator: torch.Generator) -> ContextLayout:
    """A layout for a clip of `num_clip_frames`, the target start drawn uniformly."""
    needed = min_clip_frames(cfg)
    if num_clip_frames < needed:
        raise ValueError(f"clips of {num_clip_frames} latent frames are shorter than the teacher's sink + recent + "
                         f"target ({needed}); use longer clips or smaller teacher.* sizes")
    first_start = cfg.num_sink_frames + cfg.num_recent_frames
    start = first_start + int(torch.randint(num_clip_frames - needed + 1, (1,), generator=generator))
    return layout_at(start, cfg)


def layout_at(target_start: int, cfg: TeacherStageConfig) -> ContextLayout:
    recent_start = target_start - cfg.num_recent_frames
    slow = []
    frame = recent_start - cfg.slow_stride
    while frame >= cfg.num_sink_frames and len(slow) < cfg.num_slow_frames:
        slow.append(frame)
        frame -= cfg.slow_stride
    return ContextLayout(sink=list(range(cfg.num_sink_frames)), slow=sorted(slow),
                         recent=list(range(recent_start, target_start)),
                         target=list(range(target_start, target_start + cfg.num_target_frames)))
