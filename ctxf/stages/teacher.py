"""Stage 0, the context teacher: a bidirectional Wan model learns to denoise a target window given
clean history [sink | slow context | recent motion | target] (context_layout.py).

One micro-batch:
1. pick the layout's frames from each clip (one target start per micro-batch);
2. context latents get recycled prediction errors (error_recycling.py); the target is noised at
   one timestep per sample (shifted uniform), its noise possibly carrying recycled errors too;
3. the model sees [context at t = 0 | noisy target at t] and the caption, or the empty caption with
   probability `teacher.caption_dropout` (the unconditional branch classifier-free guidance reads
   when this teacher is distilled); the loss is flow matching on the target frames only, weighted by
   timestep (losses.py);
4. the x0 errors of the prediction go back into the error buffers.
With `parallel.context_parallel_degree > 1` the sequence is sharded over the context-parallel
group (the engine wraps a ContextParallelModel); with `lora.rank > 0` only adapters train.
"""

from __future__ import annotations

import torch

from ctxf.data.collate import Batch
from ctxf.models.flow_matching import add_noise, predict_x0, sample_sigma, shift_sigma, velocity_target
from ctxf.models.lora import add_lora
from ctxf.models.text_encoder import empty_caption
from ctxf.models.wan import WanDiT
from ctxf.models.weights import load_model_weights
from ctxf.stages.base import Runtime, TrainingMethod
from ctxf.stages.context_layout import ContextLayout, layout_at, sample_layout
from ctxf.stages.error_recycling import ErrorBuffer
from ctxf.stages.losses import target_flow_loss

ROLE = "teacher"


def build_trained_model(runtime: Runtime) -> WanDiT:
    """The trained role's WanDiT: seeded init or `train.init_checkpoint`, adapters when `lora.rank`."""
    cfg = runtime.config
    torch.manual_seed(cfg.train.seed)
    model = WanDiT(cfg.model)
    if cfg.train.init_checkpoint:
        load_model_weights(model, cfg.train.init_checkpoint)
    if cfg.lora.rank:
        add_lora(model, cfg.lora.targets, cfg.lora.rank, lora_alpha(cfg))
    return model.to(runtime.device).train()


def lora_alpha(cfg) -> float:
    return cfg.lora.alpha or float(cfg.lora.rank)


class ContextTeacher(TrainingMethod):
    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        cfg = self.config
        self.stage_cfg = cfg.teacher
        self.model = build_trained_model(runtime)
        if cfg.lora.rank:
            self.lora_roles[ROLE] = {"rank": cfg.lora.rank, "alpha": lora_alpha(cfg), "targets": list(cfg.lora.targets),
                                     "base": cfg.train.init_checkpoint}
        self.engines[ROLE] = runtime.build_engine(runtime.sequence_parallel(self.model), ROLE)
        self.errors = ErrorBuffer(cfg.teacher.num_error_bins, cfg.teacher.error_buffer_size,
                                  cfg.diffusion.num_train_timesteps)
        self.empty_text = self._empty_caption() if cfg.teacher.caption_dropout > 0 else None

    @property
    def engine(self):
        return self.engines[ROLE]

    def _inputs(self, batch: Batch, layout: ContextLayout) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.latents is None:
            raise ValueError("stage 0 trains on latents; set data.load_latents=true")
        device = self.runtime.device
        clean = batch.latents.to(device)[:, :, layout.frames]
        return clean, batch.text.to(device, self.runtime.compute_dtype)

    def _empty_caption(self) -> torch.Tensor:
        """The caption dropped out: the embedding the distillation stages give the teacher's unconditional branch."""
        cfg = self.config
        try:
            return empty_caption(cfg.text, cfg.model.text_dim)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"teacher.caption_dropout={cfg.teacher.caption_dropout} trains on the empty caption, whose "
                             f"embedding needs the text encoder: {err}; or set teacher.caption_dropout=0") from err

    def _drop_captions(self, text: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`text` `[B, L, D]` with each sample's caption swapped for the empty one with probability
        `teacher.caption_dropout` (drawn after the step's other draws, so they stay as without it)."""
        if self.empty_text is None:
            return text
        dropped = (torch.rand(text.shape[0], generator=generator) < self.stage_cfg.caption_dropout).to(text.device)
        return torch.where(dropped[:, None, None], self.empty_text.to(text), text)

    def train_step(self, batch: Batch, step: int, micro: int) -> dict[str, float]:
        cfg, stage = self.config, self.stage_cfg
        generator = self.runtime.step_generator(step, micro)
        with self.phase("forward"):
            layout = sample_layout(batch.latents.shape[2], stage, generator)
            clean, text = self._inputs(batch, layout)
            num_context, total = layout.num_context, float(cfg.diffusion.num_train_timesteps)
            context = self.errors.inject_context(clean[:, :, :num_context], stage.error_recycling_prob, generator)
            target = clean[:, :, num_context:]
            sigma = sample_sigma(target.shape[0], cfg.diffusion.shift, generator).to(target.device)
            timestep = sigma * total
            noise = torch.randn(target.shape, generator=generator).to(target)
            noisy = add_noise(target, self.errors.inject_noise(noise, timestep.cpu(), stage.noise_error_prob,
                                                               generator), sigma)
            text = self._drop_captions(text, generator)
            frame_timesteps = torch.cat([torch.zeros(target.shape[0], num_context, device=target.device),
                                         timestep[:, None].expand(-1, target.shape[2])], dim=1)
            dtype = self.runtime.compute_dtype
            velocity = self.engine(torch.cat([context, noisy], dim=2).to(dtype), frame_timesteps, text)
            # the context frames have no target: zeros stand in and the loss never reads them
            targets = torch.cat([torch.zeros_like(context), velocity_target(target, noise)], dim=2)
            loss = target_flow_loss(velocity, targets, num_context, timestep, total)
        self.optimize(ROLE, loss)
        x0 = predict_x0(noisy, velocity[:, :, num_context:].detach().float(), sigma)
        finite = torch.isfinite(x0.flatten(1)).all(dim=1)
        if bool(finite.all()):
            self.errors.push(timestep.cpu(), (x0 - target).cpu())
        return {"loss/flow": float(loss.detach()), "frames/context": float(num_context),
                "frames/slow": float(len(layout.slow))}

    @torch.no_grad()
    def sample(self, batch: Batch) -> torch.Tensor:
        """[1, C, F, H, W]: the first clip's context and a target denoised from noise in
        `teacher.sample_steps` Euler steps (every rank runs it; ZeRO-3 gathers weights)."""
        stage, cfg = self.stage_cfg, self.config
        frames = batch.latents.shape[2]
        layout = layout_at(frames - stage.num_target_frames, stage)
        clean, text = self._inputs(batch, layout)
        context, text = clean[:1, :, :layout.num_context], text[:1]
        generator = torch.Generator().manual_seed(cfg.train.seed)
        noise = torch.randn(clean[:1, :, layout.num_context:].shape, generator=generator).to(clean)
        self.engine.eval()
        try:
            target = denoise_window(self.engine, context.to(self.runtime.compute_dtype), noise, text,
                                    stage.sample_steps, cfg.diffusion.shift, float(cfg.diffusion.num_train_timesteps))
        finally:
            self.engine.train()
        return torch.cat([context, target], dim=2).cpu()

    def state_dict(self) -> dict:
        return {"error_buffers": self.errors.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.errors.load_state_dict(state["error_buffers"])


@torch.no_grad()
def denoise_window(model, context: torch.Tensor, noise: torch.Tensor, text: torch.Tensor, steps: int, shift: float,
                   total: float) -> torch.Tensor:
    """The teacher's sampler, as stage 0 trains it: a window `[B, C, W, H, W']` denoised from `noise` in
    `steps` Euler steps of the flow (sigma 1 -> 0, shifted), each one bidirectional forward over
    [clean `context` (t = 0) | window (t = sigma * total)]. Returns the window's x0 `[B, C, W, H, W']` (fp32)."""
    num_context, x = context.shape[2], noise.float()
    levels = [float(shift_sigma(1 - i / steps, shift)) for i in range(steps)] + [0.0]
    for sigma, following in zip(levels[:-1], levels[1:]):
        frame_t = torch.cat([torch.zeros(x.shape[0], num_context),
                             torch.full((x.shape[0], x.shape[2]), sigma * total)], 1).to(x.device)
        velocity = model(torch.cat([context, x.to(context.dtype)], 2), frame_t, text)[:, :, num_context:].float()
        x = x + (following - sigma) * velocity
    return x
