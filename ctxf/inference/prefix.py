"""What a stream continues: latents from a file, a real video, or one still image.

A video is decoded with PyAV, resampled to `video.video_fps` and scaled to cover the model's
frame size and centre-cropped, exactly as `data_pipeline` prepares training clips (its
`VideoFrames` / `split_clips` / `ClipEncoder`, reused here), then encoded through the
configured codec (pixel or Wan VAE). An image is the first frame of a video of one frame: it
becomes the first latent frame, as in image-to-video.

Every loader returns clean latents `[1, C, F, H, W]` (or `[B, ...]` from a latents file).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch

from ctxf.config import Config
from ctxf.tensor_files import load_tensor
from data_pipeline.clip_encoding import ClipEncoder
from data_pipeline.video_io import VideoFrames, split_clips


def load_prefix(cfg: Config, encoder: ClipEncoder) -> torch.Tensor | None:
    """The configured prefix (`inference.prefix_latents`, `prefix_video` or `prefix_image`), checked
    against the model's latent shape; None when there is none."""
    inf = cfg.inference
    if inf.prefix_latents:
        latents = load_latents(inf.prefix_latents)
    elif inf.prefix_video:
        latents = encoder.latents(video_frames(inf.prefix_video, cfg, encoder))[None]
    elif inf.prefix_image:
        latents = encoder.latents(video_frames(inf.prefix_image, cfg, encoder, what="--prefix-image")[:1])[None]
    else:
        return None
    expected = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
    got = tuple(latents.shape[1:2] + latents.shape[3:])
    if got != expected:
        raise ValueError(f"prefix latents have [C, H, W] = {got}, the model expects {expected}")
    return latents


def load_latents(path: str) -> torch.Tensor:
    """A latent clip (`latents` in a .safetensors, or a .npy) as [B, C, F, H, W]."""
    latents = load_tensor(path, "latents", what="prefix latents")
    if latents.ndim == 4:
        latents = latents[None]
    if latents.ndim != 5:
        raise ValueError(f"prefix latents {path} have shape {tuple(latents.shape)}; expected [C,F,H,W] or [B,C,F,H,W]")
    return latents.float()


def video_frames(path: str, cfg: Config, encoder: ClipEncoder, what: str = "--prefix-video") -> np.ndarray:
    """`[T, H, W, 3]` uint8 frames of a video or image file at the model's frame rate and pixel size,
    trimmed to a length the codec takes (4k + 1 frames for the Wan VAE)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    height = cfg.video.latent_height * encoder.spatial_stride
    width = cfg.video.latent_width * encoder.spatial_stride
    fps = cfg.video.video_fps
    try:
        frames = list(VideoFrames(path, fps, height, width))
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path}: PyAV cannot decode it ({err}); give a video or image file") from None
    if not frames:
        raise ValueError(f"{what} {path} holds no frames")
    clips = list(split_clips(frames, fps, clip_frames=len(frames), min_frames=1,
                             frame_multiple=encoder.frame_multiple))
    return clips[0].frames
