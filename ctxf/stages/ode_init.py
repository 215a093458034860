"""Stage `ode_init`: the causal student starts from the teacher's weights and regresses the
teacher's few-step ODE trajectories (as CausVid and Self-Forcing initialise their students).

Trajectories are made once, before training, by `python -m data_pipeline.make_ode_pairs`, which
calls `teacher_trajectory` below and stores each one as an ordinary shard sample whose latents
are the states stacked along the frame axis: [x at t_0 | x at t_1 | ... | x at t_{S-1} | x0],
each a window of `distill.window_frames` frames (`[C, (S + 1) W, h, w]`), the timesteps in the
sample's metadata (`ode_timesteps`). So the loader, its resume and its corrupt-sample handling
are the same as for video data.

One micro-batch: every chunk of every sample picks one of the S noisy states (a per-step
generator); the student sees the window with block-causal attention, each chunk at its own
timestep, and its x0 prediction regresses onto the trajectory's x0 (MSE).
"""

from __future__ import annotations

import torch

from ctxf.data.collate import Batch
from ctxf.inference.generator import StreamingGenerator
from ctxf.memory.cache import build_memory
from ctxf.models.flow_matching import predict_x0, sampling_timesteps
from ctxf.models.wan import WanDiT
from ctxf.models.weights import load_model_weights
from ctxf.stages.base import Runtime, TrainingMethod
from ctxf.stages.rollout import stream_sample

STUDENT = "student"


@torch.no_grad()
def teacher_trajectory(teacher: WanDiT, noise: torch.Tensor, text: torch.Tensor, empty_text: torch.Tensor,
                       timesteps: list[float], substeps: int, guidance: float,
                       num_train_timesteps: float = 1000.0) -> torch.Tensor:
    """States `[S + 1, B, C, W, H, W']` of the teacher's probability-flow ODE from `noise` (taken
    as the state at timesteps[0]): at each of the S timesteps, then x0. Euler with `substeps`
    steps between consecutive timesteps (and from the last one to 0); the velocity is guided,
    `uncond + guidance (cond - uncond)`, the unconditional branch seeing `empty_text`."""
    levels = [t / num_train_timesteps for t in timesteps] + [0.0]
    batch = noise.shape[0]
    empty = empty_text.to(text).expand(batch, -1, -1)
    x, states = noise, [noise]
    for index, (start, end) in enumerate(zip(levels, levels[1:])):
        for k in range(substeps):
            sigma = start + (end - start) * k / substeps
            following = start + (end - start) * (k + 1) / substeps
            t = torch.full((batch,), sigma * num_train_timesteps, device=x.device)
            conditional = teacher(x, t, text).float()
            unconditional = teacher(x, t, empty).float()
            x = x + (following - sigma) * (unconditional + guidance * (conditional - unconditional)).to(x)
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

    def _states(self, batch: Batch) -> torch.Tensor:
        """[B, C, S + 1, W, H, W'] from the stacked trajectory latents, after checking its timesteps."""
        stored = batch.meta[0].get("ode_timesteps")
        if stored is None or len(stored) != len(self.timesteps) or \
                not torch.allclose(torch.tensor(stored, dtype=torch.float32), self.timesteps.float(), atol=1e-3):
            raise ValueError(f"ode_init: sample {batch.keys[0]} holds trajectories at timesteps {stored}, the config "
                             f"samples at {self.timesteps.tolist()}; make the pairs with this config "
                             f"(python -m data_pipeline.make_ode_pairs) or set diffusion.* to match")
        latents = batch.latents.to(self.runtime.device)
        num_states = len(self.timesteps) + 1
        # [B, C, (S+1) W, H, W'] -> [B, C, S+1, W, H, W']
        return latents.unflatten(2, (num_states, latents.shape[2] // num_states))

    def train_step(self, batch: Batch, step: int, micro: int) -> dict[str, float]:
        states = self._states(batch)
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
            velocity = self.engines[STUDENT](noisy.to(self.runtime.compute_dtype), timestep, text,
                                             num_frames_per_block=self.block)
            x0 = predict_x0(noisy, velocity.float(), sigma)
            loss = torch.nn.functional.mse_loss(x0, states[:, :, -1].float())
        self.optimize(STUDENT, loss)
        return {"loss/ode": float(loss.detach())}

    @torch.no_grad()
    def sample(self, batch: Batch) -> torch.Tensor:
        text = batch.text[:1].to(self.runtime.device, self.runtime.compute_dtype)
        return stream_sample(self.generator, text, self.config)
