"""Stage `ode_init`: the causal student starts from the teacher's weights and regresses the
teacher's few-step ODE trajectories (as CausVid and Self-Forcing initialise their students).

Trajectories are made once, before training, by `python -m data_pipeline.make_ode_pairs`, which
calls `teacher_trajectory` below and stores each one as an ordinary shard sample whose latents
are the states stacked along the frame axis: [x at t_0 | x at t_1 | ... | x at t_{S-1} | x0],
each a window of `distill.window_frames` frames (`[C, (S + 1) W, h, w]`), the timesteps in the
sample's metadata (`ode_timesteps`). So the loader, its resume and its corrupt-sample handling
are the same as for video data.

A trajectory may continue a clip (`make_ode_pairs --context-from`): the teacher denoised the window
given the clip's frames before it as clean context, and the sample's latents start with the whole
clip, `[clip (L frames) | states]`, the window's first frame in the metadata (`context_frames`).

One micro-batch: every chunk of every sample picks one of the S noisy states (a per-step
generator); its x0 prediction regresses onto the trajectory's x0 (MSE). Without context the
student sees the window with block-causal attention, each chunk at its own timestep. With
context it sees it as it will at inference: the clip's frames before the window are written
into its memory (`StreamingGenerator.prefill`), then chunk by chunk the noisy chunk is predicted
against the memory and the trajectory's clean chunk is written in after it.
"""

from __future__ import annotations

import torch

from ctxf.data.collate import Batch
from ctxf.inference.generator import StreamingGenerator
from ctxf.memory.cache import build_memory
from ctxf.models.flow_matching import predict_x0, sampling_timesteps
from ctxf.models.wan import WanDiT
from ctxf.models.weights import load_model_weights
from ctxf.parallel.step_sync import max_over_ranks
from ctxf.stages.base import Runtime, TrainingMethod
from ctxf.stages.guidance import guided
from ctxf.stages.rollout import stream_sample

STUDENT = "student"


@torch.no_grad()
def teacher_trajectory(teacher: WanDiT, noise: torch.Tensor, text: torch.Tensor, empty_text: torch.Tensor,
                       timesteps: list[float], substeps: int, guidance: float,
                       num_train_timesteps: float = 1000.0, context: torch.Tensor | None = None) -> torch.Tensor:
    """States `[S + 1, B, C, W, H, W']` of the teacher's probability-flow ODE from `noise` (taken
    as the state at timesteps[0]): at each of the S timesteps, then x0. Euler with `substeps`
    steps between consecutive timesteps (and from the last one to 0); the velocity is guided,
    `uncond + guidance (cond - uncond)`, the unconditional branch seeing `empty_text`.
    `context` (`[B, C, N, H, W']` clean latents): every forward sees [context (t = 0) | window]."""
    levels = [t / num_train_timesteps for t in timesteps] + [0.0]
    batch = noise.shape[0]
    empty = empty_text.to(text).expand(batch, -1, -1)
    num_context = 0 if context is None else context.shape[2]

    def velocity(x: torch.Tensor, sigma: float, caption: torch.Tensor) -> torch.Tensor:
        if context is None:
            return teacher(x, torch.full((batch,), sigma * num_train_timesteps, device=x.device), caption).float()
        # per frame: the clean context at t = 0, the window at sigma
        frame_t = torch.full((batch, num_context + x.shape[2]), sigma * num_train_timesteps, device=x.device)
        frame_t[:, :num_context] = 0.0
        return teacher(torch.cat([context.to(x), x], dim=2), frame_t, caption)[:, :, num_context:].float()

    x, states = noise, [noise]
    for index, (start, end) in enumerate(zip(levels, levels[1:])):
        for k in range(substeps):
            sigma = start + (end - start) * k / substeps
            following = start + (end - start) * (k + 1) / substeps
            direction = guided(velocity(x, sigma, text), lambda: velocity(x, sigma, empty), guidance)
            x = x + (following - sigma) * direction.to(x)
        states.append(x)
    return torch.stack(states)


class ODEInit(TrainingMethod):
    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        cfg = self.config
        torch.manual_seed(cfg.train.seed)
        model = WanDiT(cfg.model)
        load_model_weights(model, cfg.train.init_checkpoint or cfg.distill.teacher_checkpoint)
        self.engines[STUDENT] = runtime.build_engine(model.to(runtime.device).train(), STUDENT)
        self.timesteps = torch.tensor(sampling_timesteps(cfg.diffusion))
        self.block = cfg.video.num_frames_per_block
        self.generator = StreamingGenerator(self.engines[STUDENT], build_memory(cfg), cfg.diffusion, self.block)

    def _states(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([B, C, S + 1, W, H, W'] the trajectories, [B, C, L, H, W'] their clips or None), after checking
        the timesteps."""
        stored = batch.meta[0].get("ode_timesteps")
        if stored is None or len(stored) != len(self.timesteps) or \
                not torch.allclose(torch.tensor(stored, dtype=torch.float32), self.timesteps.float(), atol=1e-3):
            raise ValueError(f"ode_init: sample {batch.keys[0]} holds trajectories at timesteps {stored}, the config "
                             f"samples at {self.timesteps.tolist()}; make the pairs with this config "
                             f"(python -m data_pipeline.make_ode_pairs) or set diffusion.* to match")
        latents = batch.latents.to(self.runtime.device)
        clip_frames = batch.meta[0].get("context_clip_frames", 0)
        clips, latents = (latents[:, :, :clip_frames], latents[:, :, clip_frames:]) if clip_frames else (None, latents)
        num_states = len(self.timesteps) + 1
        # [B, C, (S+1) W, H, W'] -> [B, C, S+1, W, H, W']
        return latents.unflatten(2, (num_states, latents.shape[2] // num_states)), clips

    def train_step(self, batch: Batch, step: int, micro: int) -> dict[str, float]:
        states, clips = self._states(batch)
        batch_size, window = states.shape[0], states.shape[3]
        generator = self.runtime.step_generator(step, micro, "ode_states")
        # one state index per chunk, [B, W // block] -> per frame [B, W]
        chunk_state = torch.randint(len(self.timesteps), (batch_size, window // self.block), generator=generator)
        frame_state = chunk_state.repeat_interleave(self.block, dim=1).to(states.device)
        pick = torch.nn.functional.one_hot(frame_state, states.shape[2]).to(states.dtype)  # [B, W, S+1]
        noisy = torch.einsum("bcswhv,bws->bcwhv", states, pick)
        timestep = self.timesteps.to(states.device)[frame_state]  # [B, W]
        sigma = timestep / float(self.config.diffusion.num_train_timesteps)
        text = batch.text.to(self.runtime.device, self.runtime.compute_dtype)
        with self.phase("forward"):
            if clips is None:
                velocity = self.engines[STUDENT](noisy.to(self.runtime.compute_dtype), timestep, text,
                                                 num_frames_per_block=self.block)
                x0 = predict_x0(noisy, velocity.float(), sigma)
            else:
                lengths = [meta["context_frames"] for meta in batch.meta]
                passes = [-(-n // self.block) for n in lengths]  # prefill passes, one per chunk of context
                most = max_over_ranks(passes)
                x0 = torch.cat([self._continue(clips[i:i + 1, :, :n], noisy[i:i + 1], timestep[i:i + 1],
                                               states[i:i + 1, :, -1], text[i:i + 1], most[i] - passes[i])
                                for i, n in enumerate(lengths)])
            loss = torch.nn.functional.mse_loss(x0, states[:, :, -1].float())
        self.optimize(STUDENT, loss)
        return {"loss/ode": float(loss.detach())}

    def _continue(self, context: torch.Tensor, noisy: torch.Tensor, timestep: torch.Tensor, clean: torch.Tensor,
                  text: torch.Tensor, idle_passes: int = 0) -> torch.Tensor:
        """x0 `[1, C, W, H, W']` the student predicts for one window after `context` `[1, C, N, H, W']`: the
        context prefilled into its memory, then per chunk a prediction against the memory (with gradient)
        and the trajectory's `clean` chunk written in, as inference writes in the chunk it generated.

        ZeRO-3 gathers parameters in every forward, so every rank must run as many: a rank whose context
        needs fewer prefill passes than another's runs `idle_passes` more on zeros, without gradient and
        without touching the memory."""
        dtype = self.runtime.compute_dtype
        self.generator.reset()
        self.generator.prefill(context.to(dtype), text)
        idle = torch.zeros_like(noisy[:, :, :self.block], dtype=dtype)
        for _ in range(idle_passes):
            with torch.no_grad():
                self.generator.predict(idle, timestep[:, 0], text)
        predictions = []
        for start in range(0, noisy.shape[2], self.block):
            chunk = noisy[:, :, start:start + self.block]
            predictions.append(self.generator.predict(chunk.to(dtype), timestep[:, start], text).float())
            self.generator.prefill(clean[:, :, start:start + self.block].to(dtype), text)
        return torch.cat(predictions, dim=2)

    @torch.no_grad()
    def sample(self, batch: Batch) -> torch.Tensor:
        text = batch.text[:1].to(self.runtime.device, self.runtime.compute_dtype)
        return stream_sample(self.generator, text, self.config)
