"""Which frames a memory keeps, and at which RoPE time positions they sit.

A policy works on frame records only (absolute index, segment, mean key) and never touches
key/value tensors, so it can be tested with hand-made keys. `admit()` returns the frames to
keep in attention order; since segments are ordered oldest to newest (sink, slow, fast) the
kept frames are always a subsequence of the previous ones plus the new ones.

Policies:
- `full`: everything (unbounded), absolute positions.
- `rolling`: the last `window_frames` (Self-Forcing's rolling KV cache), absolute positions.
- `sink_local`: sink + last `window_frames` (LongLive), absolute positions.
- `infinity_rope`: sink + last `window_frames` with bounded, block-relative positions.
- `slow_fast`: sink + surprisal-selected slow keyframes + FIFO fast window, bounded positions.
- `uniform`: as slow_fast, but the slow memory keeps one frame every `uniform_stride`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # ctxf.config asks this module for capacities, so it is imported for types only
    from ctxf.config import MemoryConfig


@dataclass
class FrameRecord:
    index: int  # absolute latent-frame index in the video
    mean_key: torch.Tensor  # [L * H * D] mean over the frame's tokens (batch-averaged), all layers
    segment: str = "new"  # sink | slow | fast | window


class MemoryPolicy(ABC):
    bounded_positions: bool = False

    def __init__(self, cfg: MemoryConfig):
        self.cfg = cfg

    @property
    @abstractmethod
    def capacity_frames(self) -> int | None:
        """Most frames ever kept after `admit` (None: unbounded)."""

    @abstractmethod
    def admit(self, kept: list[FrameRecord], new: list[FrameRecord]) -> list[FrameRecord]:
        """Frames to keep, in attention order, after `new` (in time order) arrive."""

    def positions(self, kept: list[FrameRecord], num_query_frames: int,
                  next_index: int) -> tuple[list[int], list[int]]:
        """RoPE time positions of the kept frames and of the next `num_query_frames` frames."""
        if not self.bounded_positions:
            return [f.index for f in kept], list(range(next_index, next_index + num_query_frames))
        # Bounded: queries sit at the anchor; the sink keeps 0..n_sink-1; every other kept frame
        # gets a contiguous position ending just before the anchor.
        anchor = min(next_index, self.cfg.rope_length - num_query_frames)
        others = [f for f in kept if f.segment != "sink"]
        first = anchor - len(others)
        key_positions, rank = [], 0
        for frame in kept:
            if frame.segment == "sink":
                key_positions.append(frame.index)
            else:
                key_positions.append(first + rank)
                rank += 1
        return key_positions, list(range(anchor, anchor + num_query_frames))


class FullHistory(MemoryPolicy):
    capacity_frames = None

    def admit(self, kept, new):
        for frame in new:
            frame.segment = "window"
        return kept + new


class SinkAndWindow(MemoryPolicy):
    """The first `num_sink` frames forever plus the most recent `window` frames."""

    def __init__(self, cfg: MemoryConfig, num_sink: int, window: int, bounded: bool):
        super().__init__(cfg)
        self.num_sink, self.window, self.bounded_positions = num_sink, window, bounded

    @property
    def capacity_frames(self) -> int:
        return self.num_sink + self.window

    def admit(self, kept, new):
        sink = [f for f in kept if f.segment == "sink"]
        window = [f for f in kept if f.segment == "window"]
        for frame in new:
            if len(sink) < self.num_sink:
                frame.segment = "sink"
                sink.append(frame)
            else:
                frame.segment = "window"
                window.append(frame)
        return sink + (window[-self.window:] if self.window else [])


class SlowFastMemory(MemoryPolicy):
    """Sink + slow keyframes + fast FIFO (docs/method.md, Slow-Fast Memory). A frame leaving the fast window
    is a keyframe candidate, decided once per frame on the clean refresh pass for all layers."""

    bounded_positions = True

    def __init__(self, cfg: MemoryConfig, keyframe_rule: "KeyframeRule"):
        super().__init__(cfg)
        self.keyframe_rule = keyframe_rule

    @property
    def capacity_frames(self) -> int:
        return self.cfg.num_sink_frames + self.cfg.num_slow_frames + self.cfg.num_fast_frames

    def admit(self, kept, new):
        cfg = self.cfg
        sink = [f for f in kept if f.segment == "sink"]
        slow = [f for f in kept if f.segment == "slow"]
        fast = [f for f in kept if f.segment == "fast"]
        for frame in new:
            if len(sink) < cfg.num_sink_frames:
                frame.segment = "sink"
                sink.append(frame)
                continue
            frame.segment = "fast"
            fast.append(frame)
            if len(fast) <= cfg.num_fast_frames:
                continue
            candidate = fast.pop(0)
            if cfg.num_slow_frames and self.keyframe_rule.keep(candidate, slow[-1] if slow else None):
                candidate.segment = "slow"
                slow.append(candidate)
                if len(slow) > cfg.num_slow_frames:
                    slow.pop(0)
        return sink + slow + fast


class KeyframeRule(ABC):
    @abstractmethod
    def keep(self, candidate: FrameRecord, last_keyframe: FrameRecord | None) -> bool: ...


class SurprisalKeyframes(KeyframeRule):
    """Keep a frame whose mean key is far from the last keyframe's: cosine < threshold."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def keep(self, candidate, last_keyframe):
        if last_keyframe is None:
            return True
        similarity = F.cosine_similarity(candidate.mean_key.float(), last_keyframe.mean_key.float(), dim=0)
        return bool(similarity < self.threshold)


class UniformKeyframes(KeyframeRule):
    """Keep one frame every `stride` (counted from the first frame after the sink)."""

    def __init__(self, stride: int, num_sink: int):
        self.stride, self.num_sink = stride, num_sink

    def keep(self, candidate, last_keyframe):
        return (candidate.index - self.num_sink) % self.stride == 0


POLICY_BUILDERS: dict[str, Callable[[MemoryConfig], MemoryPolicy]] = {
    "slow_fast": lambda cfg: SlowFastMemory(cfg, SurprisalKeyframes(cfg.surprise_threshold)),
    "uniform": lambda cfg: SlowFastMemory(cfg, UniformKeyframes(cfg.uniform_stride, cfg.num_sink_frames)),
    "full": FullHistory,
    "rolling": lambda cfg: SinkAndWindow(cfg, num_sink=0, window=cfg.window_frames, bounded=False),
    "sink_local": lambda cfg: SinkAndWindow(cfg, num_sink=cfg.num_sink_frames, window=cfg.window_frames,
                                            bounded=False),
    "infinity_rope": lambda cfg: SinkAndWindow(cfg, num_sink=cfg.num_sink_frames, window=cfg.window_frames,
                                               bounded=True),
}


def build_policy(cfg: MemoryConfig) -> MemoryPolicy:
    if cfg.policy not in POLICY_BUILDERS:
        raise ValueError(f"memory.policy={cfg.policy!r}: choose one of {', '.join(POLICY_BUILDERS)}")
    return POLICY_BUILDERS[cfg.policy](cfg)
