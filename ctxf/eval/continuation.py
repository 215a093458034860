"""What the curtain harness asks of a model: continue these frames by that many frames.

`VideoContinuation` is the one interface the harness calls, so a trained checkpoint and the
scripted controls of the tests are scored by the same code. `StreamingContinuation` is the real
one: it runs a model through exactly what `ctxf-generate` runs (the data pipeline's codec to
encode the prefix, `StreamingSession.prefill` to write it into memory, the configured memory
policy, `StreamingSession.stream` for the new chunks) and decodes the result through the codec.
`TeacherContinuation` runs a stage-0 teacher the way stage 0 trained it (ctxf.stages.teacher):
a bidirectional model has no KV cache to stream through, so every window is denoised by full
forwards over [its context layout of the history so far | window].
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ctxf.config import Config
from ctxf.inference.generator import StreamingGenerator
from ctxf.inference.run import build_parts
from ctxf.inference.session import StreamingSession
from ctxf.memory.cache import build_memory
from ctxf.models.codec import video_to_uint8
from ctxf.stages.context_layout import layout_at, min_clip_frames
from ctxf.stages.teacher import denoise_window
from data_pipeline.clip_encoding import ClipEncoder


class VideoContinuation(Protocol):
    def continue_video(self, prefix: np.ndarray, num_frames: int, prompt: str) -> np.ndarray:
        """`prefix` `[T, H, W, 3]` uint8 -> the next `num_frames` frames `[num_frames, H, W, 3]` uint8."""


class StreamingContinuation:
    """A model streamed under `cfg.memory.policy`, as `ctxf-generate` streams it."""

    def __init__(self, cfg: Config, model: torch.nn.Module, encoder: ClipEncoder):
        if cfg.codec.kind != "pixel":
            raise ValueError(f"the curtain world is drawn one frame per latent frame through the pixel codec; "
                             f"codec.kind={cfg.codec.kind!r} does not fit it (use codec.kind=pixel)")
        self.cfg, self.model, self.encoder = cfg, model, encoder

    @torch.no_grad()
    def continue_video(self, prefix: np.ndarray, num_frames: int, prompt: str) -> np.ndarray:
        cfg = self.cfg
        param = next(self.model.parameters())
        generator = StreamingGenerator(self.model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
        latent_shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
        session = StreamingSession(
            generator, lambda text: self.encoder.text_encoder.encode([text]).to(device=param.device, dtype=param.dtype),
            prompt, "keep", latent_shape, cfg.inference.seed, cfg.video.latent_fps)
        session.prefill(self.encoder.latents(prefix)[None].to(device=param.device, dtype=param.dtype))
        chunks = [chunk.float().cpu() for chunk in session.stream(num_frames)]
        video = self.encoder.codec.decode(torch.cat(chunks, dim=2))
        return video_to_uint8(video)[0].numpy()


class TeacherContinuation:
    """A stage-0 teacher generating window after window of `teacher.num_target_frames`, each from the
    [sink | slow | recent] frames of the history so far (`layout_at`, as in training), denoised in
    `teacher.sample_steps` Euler steps; the memory policy plays no part."""

    def __init__(self, cfg: Config, model: torch.nn.Module, encoder: ClipEncoder):
        self.cfg, self.model, self.encoder = cfg, model.eval(), encoder

    @torch.no_grad()
    def continue_video(self, prefix: np.ndarray, num_frames: int, prompt: str) -> np.ndarray:
        cfg, stage = self.cfg, self.cfg.teacher
        param = next(self.model.parameters())
        history = self.encoder.latents(prefix)[None].to(device=param.device, dtype=param.dtype)
        start = history.shape[2]
        if start < stage.num_sink_frames + stage.num_recent_frames:
            raise ValueError(f"a {start}-frame prefix is shorter than the teacher's sink + recent frames "
                             f"({min_clip_frames(stage) - stage.num_target_frames}); give a longer prefix")
        text = self.encoder.text_encoder.encode([prompt]).to(device=param.device, dtype=param.dtype)
        generator = torch.Generator().manual_seed(cfg.inference.seed)
        while history.shape[2] < start + num_frames:
            layout = layout_at(history.shape[2], stage)
            noise = torch.randn((1, history.shape[1], stage.num_target_frames, *history.shape[3:]), generator=generator)
            window = denoise_window(self.model, history[:, :, layout.context], noise.to(param.device), text,
                                    stage.sample_steps, cfg.diffusion.shift, float(cfg.diffusion.num_train_timesteps))
            history = torch.cat([history, window.to(history.dtype)], dim=2)
        video = self.encoder.codec.decode(history[:, :, start:start + num_frames].float().cpu())
        return video_to_uint8(video)[0].numpy()


def continuation_from_config(cfg: Config, generator: str) -> VideoContinuation:
    """`streaming` (a causal student, `StreamingContinuation`) or `teacher` (`TeacherContinuation`) of the
    model `cfg.inference.checkpoint` (+ `checkpoint_role`) names, loaded as `ctxf-generate` loads it."""
    kinds = {"streaming": StreamingContinuation, "teacher": TeacherContinuation}
    if generator not in kinds:
        raise ValueError(f"generator {generator!r}: choose streaming or teacher")
    parts = build_parts(cfg)
    return kinds[generator](cfg, parts.model, parts.encoder)
