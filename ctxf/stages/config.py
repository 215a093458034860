"""Schema of the stage sections of the config: which method trains, stage 0's settings (`teacher`)
and the distillation stages' (`distill`).

Kept apart from the methods themselves so that `ctxf.config` can check a stage name and its
numbers without importing any model or process-group code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# train.stage values, in the order of the recipe, then the baselines trained by the same code;
# the registry (ctxf.stages) maps them to methods
STAGE_NAMES = ("teacher", "ode_init", "local_dmd", "context_dmd", "self_forcing", "longlive")
# stages that need a frozen teacher (distill.teacher_checkpoint) besides the trained student
TEACHER_STAGES = ("ode_init", "local_dmd", "context_dmd", "self_forcing", "longlive")
TEACHER_CONTEXTS = ("memory", "contiguous", "full")


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
    caption_dropout: float = field(default=0.0, metadata=_help(
        "probability a sample trains on the empty caption: the unconditional branch that classifier-free "
        "guidance (distill.teacher_guidance) asks the teacher for (Wan was trained with 0.1; above 0 the text "
        "encoder is loaded once per rank for the empty caption's embedding)"))


@dataclass
class DistillConfig:
    """ODE initialisation and distribution-matching distillation of the causal student (stages
    ode_init, local_dmd, context_dmd and the self_forcing / longlive baselines)."""

    teacher_checkpoint: str = field(default="", metadata=_help(
        "the frozen teacher: a stage-0 run or step directory (its LoRA merged), a diffusers directory or a Wan "
        "file; the critic starts from it too"))
    window_frames: int = field(default=21, metadata=_help("latent frames of the DMD window (the last of a rollout)"))
    min_rollout_frames: int = field(default=21, metadata=_help(
        "context_dmd / longlive: shortest rollout drawn (whole chunks, >= window_frames)"))
    rollout_frames_start: int = field(default=84, metadata=_help(
        "context_dmd / longlive: longest rollout at step 0 (each step draws uniformly up to the current longest)"))
    rollout_frames_end: int = field(default=105, metadata=_help(
        "context_dmd / longlive: longest rollout after rollout_growth_steps (linear growth)"))
    rollout_growth_steps: int = field(default=600, metadata=_help("steps over which the longest rollout grows"))
    teacher_context: str = field(default="memory", metadata=_help(
        "context_dmd: what the teacher and critic see before the target: memory (the student memory's frames at "
        "its positions) | contiguous (the frames right before the target) | full (the whole history)"))
    contiguous_frames: int = field(default=21, metadata=_help("teacher_context=contiguous: frames before the target"))
    teacher_guidance: float = field(default=3.0, metadata=_help(
        "classifier-free guidance scale of the teacher (unconditional: the empty caption)"))
    generator_every: int = field(default=5, metadata=_help(
        "the student (generator) trains every Nth step, the critic every step"))
    min_timestep: float = field(default=20.0, metadata=_help("DMD timesteps are clamped to [min, max]"))
    max_timestep: float = field(default=980.0, metadata=_help("DMD timesteps are clamped to [min, max]"))
    prefix_frames: int = field(default=0, metadata=_help(
        "DMD stages: each rollout first takes in the training clip's first P latent frames, P drawn in whole "
        "chunks from 0 to this (0: rollouts start from nothing, as in the paper)"))
    ode_solver_substeps: int = field(default=8, metadata=_help(
        "make_ode_pairs: Euler steps of the teacher between two consecutive denoising steps"))


def describe_stage(cfg) -> str:
    """One line naming the stage and its distillation numbers, for the dry run."""
    stage, dist, train = cfg.train.stage, cfg.distill, cfg.train
    if stage == "teacher":
        return f"stage teacher: {train.num_steps} steps, lr {train.teacher_lr:g}"
    parts = [f"stage {stage}: {train.num_steps} steps", f"window {dist.window_frames} latents",
             f"memory {cfg.memory.policy}"]
    if stage in ("context_dmd", "longlive"):
        parts.append(f"rollouts up to {dist.rollout_frames_start} -> {dist.rollout_frames_end} latents over "
                     f"{dist.rollout_growth_steps} steps (from {dist.min_rollout_frames})")
    if stage != "ode_init" and dist.prefix_frames:
        parts.append(f"rollouts after a clip prefix of up to {dist.prefix_frames} latents")
    if stage != "ode_init":
        context = dist.teacher_context if stage == "context_dmd" else "none"
        parts += [f"teacher context {context}", f"guidance {dist.teacher_guidance:g}",
                  f"generator every {dist.generator_every}", f"lr {train.student_lr:g} / {train.critic_lr:g}",
                  f"EMA {train.ema_decay:g} from step {train.ema_start_step}"]
    parts.append(f"grad clip {train.grad_clip:g}")
    return ", ".join(parts)
