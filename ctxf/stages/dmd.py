"""Distribution-matching distillation (DMD) of the causal student: stages `local_dmd` and
`context_dmd`, and the `self_forcing` and `longlive` baselines, which differ only in settings.

One micro-batch (the student makes its own video: the batch gives its prompts and, with
`distill.prefix_frames`, the clip frames the rollout continues):
1. the student rolls out chunk by chunk through its memory (rollout.py, the code path of
   ctxf-generate); the rollout length is the window (local) or drawn up to a linearly growing
   longest (context, longlive), the same on every rank; the window is the last chunks. With
   `distill.prefix_frames` > 0 the rollout first takes in the clip's first P frames, P drawn
   alike on every rank in whole chunks from 0 to prefix_frames (the paper's rollouts start from
   nothing; a prefix makes the student continue real video, as a memory test asks it to);
2. every `distill.generator_every`th step, the generator step: the window is noised at a DMD
   timestep; the frozen teacher (with classifier-free guidance against the empty caption) and the
   critic (without) predict x0 from [clean context | noisy window] (teacher_context.py says what
   the context is); the student takes the DMD loss (losses.py);
3. every step, the critic step: flow matching on a freshly noised copy of the window (detached),
   the context clean and unscored.

Engines: `student` (the causal WanDiT, trained, EMA'd) and `critic` (a bidirectional WanDiT that
starts from the teacher's weights, sequence-sharded like the teacher); the teacher is frozen
(`Runtime.frozen_teacher`). Optimiser settings per role come from `train.*` (AdamW,
student_lr / critic_lr and their betas, grad_clip, ema_decay from ema_start_step).
"""

from __future__ import annotations

import torch

from ctxf.data.collate import Batch
from ctxf.inference.generator import StreamingGenerator
from ctxf.memory.cache import build_memory
from ctxf.models.flow_matching import add_noise, predict_x0, sample_dmd_timestep
from ctxf.models.text_encoder import empty_caption
from ctxf.models.wan import WanDiT
from ctxf.models.weights import load_model_weights
from ctxf.stages.base import Runtime, TrainingMethod
from ctxf.stages.guidance import guided
from ctxf.stages.losses import critic_flow_loss, dmd_generator_loss
from ctxf.stages.rollout import draw_exit_steps, roll_out, stream_sample
from ctxf.stages.teacher_context import ScoredInput, scored_input

STUDENT, CRITIC = "student", "critic"


def build_student(runtime: Runtime) -> WanDiT:
    """The causal student: `train.init_checkpoint` (the previous stage's run, its default role) or
    a seeded init."""
    cfg = runtime.config
    torch.manual_seed(cfg.train.seed)
    model = WanDiT(cfg.model)
    if cfg.train.init_checkpoint:
        load_model_weights(model, cfg.train.init_checkpoint)
    return model.to(runtime.device).train()


def build_teacher_copy(runtime: Runtime) -> WanDiT:
    """A WanDiT holding the teacher's weights (`distill.teacher_checkpoint`, its LoRA merged)."""
    model = WanDiT(runtime.config.model)
    load_model_weights(model, runtime.config.distill.teacher_checkpoint)
    return model.to(runtime.device)


def longest_rollout(step: int, cfg) -> int:
    """The curriculum: the longest rollout at `step`, growing linearly from rollout_frames_start to
    rollout_frames_end over rollout_growth_steps, in whole chunks (rounded down)."""
    dist, block = cfg.distill, cfg.video.num_frames_per_block
    growth = dist.rollout_growth_steps
    fraction = 1.0 if growth == 0 else min(step, growth) / growth
    frames = dist.rollout_frames_start + fraction * (dist.rollout_frames_end - dist.rollout_frames_start)
    return max(dist.rollout_frames_start, int(frames) // block * block)


class DistributionMatching(TrainingMethod):
    grows_rollouts = False  # True: context_dmd / longlive curriculum; False: rollout = the window
    sees_context = False  # True: the teacher and critic see distill.teacher_context

    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        cfg = self.config
        self.engines[STUDENT] = runtime.build_engine(build_student(runtime), STUDENT)
        self.engines[CRITIC] = runtime.build_engine(runtime.sequence_parallel(build_teacher_copy(runtime).train()),
                                                    CRITIC)
        self.teacher = runtime.frozen_teacher(build_teacher_copy(runtime))
        self.ema_roles = (STUDENT,)
        self.block = cfg.video.num_frames_per_block
        self.latent_shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
        self.generator = StreamingGenerator(self.engines[STUDENT], build_memory(cfg), cfg.diffusion, self.block)
        # the unconditional branch of the teacher's guidance: the empty caption's embedding
        self.empty_text = empty_caption(cfg.text, cfg.model.text_dim)
        self.context_mode = cfg.distill.teacher_context if self.sees_context else "none"

    # ------------------------------------------------------------------ schedule

    def generator_turn(self, step: int) -> bool:
        return step % self.config.distill.generator_every == 0

    def stepped_roles(self, step: int) -> tuple[str, ...]:
        return (STUDENT, CRITIC) if self.generator_turn(step) else (CRITIC,)

    def prefix(self, batch: Batch, step: int) -> torch.Tensor | None:
        """The clip frames this step's rollout continues (None: it starts from nothing)."""
        longest = self.config.distill.prefix_frames
        if not longest:
            return None
        if batch.latents is None or batch.latents.shape[2] < longest:
            have = "no latents" if batch.latents is None else f"clips of {batch.latents.shape[2]} latent frames"
            raise ValueError(f"distill.prefix_frames={longest} needs training clips at least that long, the batch "
                             f"has {have}; lower distill.prefix_frames or set data.num_frames >= {longest}")
        shared = self.runtime.shared_generator(step, "prefix_frames")
        count = int(torch.randint(longest // self.block + 1, (1,), generator=shared)) * self.block
        return batch.latents[:, :, :count].to(self.runtime.device)

    def rollout_frames(self, step: int) -> int:
        """This step's rollout length, drawn alike on every rank (all run the same forwards)."""
        dist = self.config.distill
        if not self.grows_rollouts:
            return dist.window_frames
        choices = list(range(dist.min_rollout_frames, longest_rollout(step, self.config) + 1, self.block))
        shared = self.runtime.shared_generator(step, "rollout_frames")
        return choices[int(torch.randint(len(choices), (1,), generator=shared))]

    # ------------------------------------------------------------------ step

    def train_step(self, batch: Batch, step: int, micro: int) -> dict[str, float]:
        dist = self.config.distill
        text = batch.text.to(self.runtime.device, self.runtime.compute_dtype)
        train_generator = self.generator_turn(step)
        num_frames = self.rollout_frames(step)
        exit_steps = draw_exit_steps(num_frames // self.block, len(self.generator.timesteps),
                                     self.runtime.shared_generator(step, f"exit_steps/{micro}"))
        prefix = self.prefix(batch, step)
        with self.phase("rollout"):
            rollout = roll_out(self.generator, text, self.latent_shape, num_frames, dist.window_frames,
                               self.runtime.step_generator(step, micro, "rollout"), exit_steps,
                               keep_graph=train_generator, prefix=prefix)
        scored = scored_input(rollout, self.context_mode, dist.contiguous_frames)
        randomness = self.runtime.step_generator(step, micro, "dmd")
        metrics = {"frames/rollout": float(num_frames), "frames/teacher_context": float(scored.num_context),
                   "frames/prefix": float(0 if prefix is None else prefix.shape[2])}
        if train_generator:
            loss = self.generator_loss(rollout.window, scored, text, randomness)
            self.optimize(STUDENT, loss)
            metrics["loss/dmd"] = float(loss.detach())
        with self.phase("critic"):
            loss = self.critic_loss(rollout.window.detach(), scored, text, randomness)
        self.optimize(CRITIC, loss)
        metrics["loss/critic"] = float(loss.detach())
        return metrics

    def _noised(self, x: torch.Tensor, generator: torch.Generator):
        """(noisy x, noise, sigma [B], timestep [B]) at a DMD timestep."""
        diffusion, dist = self.config.diffusion, self.config.distill
        total = float(diffusion.num_train_timesteps)
        timestep = sample_dmd_timestep(x.shape[0], diffusion.shift, generator, dist.min_timestep, dist.max_timestep,
                                       total).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x)
        sigma = timestep / total
        return add_noise(x, noise, sigma), noise, sigma, timestep

    def _sequence(self, scored: ScoredInput, noisy: torch.Tensor, timestep: torch.Tensor):
        """[clean context | noisy window] in the compute dtype and its per-frame timesteps [B, N + W]."""
        batch, window = noisy.shape[0], noisy.shape[2]
        latents = torch.cat([scored.context.to(noisy), noisy], dim=2).to(self.runtime.compute_dtype)
        frame_t = torch.cat([torch.zeros(batch, scored.num_context, device=noisy.device),
                             timestep[:, None].expand(batch, window)], dim=1)
        return latents, frame_t

    def generator_loss(self, window: torch.Tensor, scored: ScoredInput, text: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
        x = window.detach().float()
        noisy, _, sigma, timestep = self._noised(x, generator)
        latents, frame_t = self._sequence(scored, noisy, timestep)
        positions, n = scored.positions.to(x.device), scored.num_context
        with torch.no_grad():
            with self.phase("teacher"):
                def teacher_velocity(caption: torch.Tensor) -> torch.Tensor:
                    return self.teacher(latents, frame_t, caption, frame_positions=positions)[:, :, n:].float()

                empty = self.empty_text.to(text).expand(text.shape[0], -1, -1)
                velocity = guided(teacher_velocity(text), lambda: teacher_velocity(empty),
                                  self.config.distill.teacher_guidance)
            teacher_x0 = predict_x0(noisy, velocity, sigma)
            with self.phase("critic"):
                critic_x0 = predict_x0(noisy, self.engines[CRITIC](latents, frame_t, text,
                                                                   frame_positions=positions)[:, :, n:].float(), sigma)
        return dmd_generator_loss(window, teacher_x0, critic_x0)

    def critic_loss(self, x: torch.Tensor, scored: ScoredInput, text: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
        x = x.float()
        noisy, noise, _, timestep = self._noised(x, generator)
        latents, frame_t = self._sequence(scored, noisy, timestep)
        velocity = self.engines[CRITIC](latents, frame_t, text, frame_positions=scored.positions.to(x.device))
        # the context frames have no target: zeros stand in and the loss never reads them
        targets = torch.cat([torch.zeros_like(scored.context, dtype=x.dtype), noise - x], dim=2)
        return critic_flow_loss(velocity, targets, scored.num_context)

    @torch.no_grad()
    def sample(self, batch: Batch) -> torch.Tensor:
        text = batch.text[:1].to(self.runtime.device, self.runtime.compute_dtype)
        return stream_sample(self.generator, text, self.config)


class LocalDMD(DistributionMatching):
    """Stage 1 (and the Self-Forcing baseline): window-long rollouts, a history-blind teacher."""


class ContextDMD(DistributionMatching):
    """Stage 2: long rollouts (linear curriculum); teacher and critic see the context."""

    grows_rollouts = True
    sees_context = True


class LongLive(DistributionMatching):
    """The LongLive baseline: long rollouts (streaming long tuning), DMD on the last window against
    a history-blind teacher."""

    grows_rollouts = True
