"""Schema of the stage sections of the config: which method trains, and stage 0's settings.

Kept apart from the methods themselves so that `ctxf.config` can check a stage name and its
numbers without importing any model or process-group code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# train.stage values, in the order of the recipe; the registry (ctxf.stages) maps them to methods
STAGE_NAMES = ("teacher",)


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class TeacherStageConfig:
    """Stage 0: the context teacher denoises a target window given clean history
    [sink | slow context | recent motion | target] (paper: 3 / up to 12 / 6 / 21 latent frames)."""

    num_sink_frames: int = field(default=3, metadata=_help("first frames of the clip, kept as context"))
    num_slow_frames: int = field(default=12, metadata=_help("most older-history frames, sampled sparsely"))
    slow_stride: int = field(default=6, metadata=_help("latent frames between two slow-context frames "
                                                       "(6 = one per 1.5 s at 4 latent frames/s)"))
    num_recent_frames: int = field(default=6, metadata=_help("frames right before the target"))
    num_target_frames: int = field(default=21, metadata=_help("frames denoised and scored"))
    error_recycling_prob: float = field(default=0.9, metadata=_help("probability a sample's context latents get "
                                                                    "recycled prediction errors added"))
    noise_error_prob: float = field(default=0.5, metadata=_help("probability a sample's target noise gets the "
                                                                "recycled errors of its timestep bin added"))
    num_error_bins: int = field(default=10, metadata=_help("timestep bins of the error buffers"))
    error_buffer_size: int = field(default=64, metadata=_help("latent frames of error kept per bin"))
    sample_steps: int = field(default=8, metadata=_help("Euler steps of the logged sample"))
