"""Video codecs: pixels <-> latents.

Two implementations behind one interface:
- `PixelCodec`: no weights, a space-to-depth fold of RGB pixels (the synthetic world's codec, so
  training and tests need no pretrained VAE);
- `WanVAECodec`: diffusers' `AutoencoderKLWan` loaded from a local directory, with Wan's fixed
  per-channel latent normalisation.

Videos are float tensors `[B, 3, T, H, W]` in [-1, 1]; latents are `[B, C, F, h, w]`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from einops import rearrange

from ctxf.config import CodecConfig


class VideoCodec(ABC):
    latent_channels: int
    spatial_stride: int

    @abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> latents [B, C, F, h, w]."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, F, h, w] -> [B, 3, T, H, W] in [-1, 1]."""

    @abstractmethod
    def num_video_frames(self, num_latent_frames: int) -> int:
        """Decoded frames for this many latent frames."""


class PixelCodec(VideoCodec):
    """Folds each `patch x patch` block of RGB pixels into channels: 3 * patch**2 latent channels."""

    def __init__(self, patch: int):
        if patch < 1:
            raise ValueError(f"pixel codec patch must be >= 1, got {patch}")
        self.patch = patch
        self.latent_channels = 3 * patch * patch
        self.spatial_stride = patch

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        _, channels, _, height, width = video.shape
        p = self.patch
        if channels != 3 or height % p or width % p:
            raise ValueError(f"pixel codec expects [B, 3, T, H, W] with H and W divisible by {p}, "
                             f"got {tuple(video.shape)}")
        # each p x p patch of pixels becomes 3 * p * p channels, ordered (colour, row in patch, column in patch)
        return rearrange(video, "b c t (h p1) (w p2) -> b (c p1 p2) t h w", p1=p, p2=p)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        channels = latents.shape[1]
        p = self.patch
        if channels != self.latent_channels:
            raise ValueError(f"pixel codec (patch {p}) expects {self.latent_channels} channels, got {channels}")
        video = rearrange(latents, "b (c p1 p2) t h w -> b c t (h p1) (w p2)", c=3, p1=p, p2=p)
        return video.clamp(-1.0, 1.0)

    def num_video_frames(self, num_latent_frames: int) -> int:
        return num_latent_frames


class WanVAECodec(VideoCodec):
    """Wan2.1's causal 3D VAE (stride 4 in time, 8 in space) from a local diffusers directory."""

    def __init__(self, path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        from diffusers import AutoencoderKLWan

        if not path:
            raise ValueError("codec.kind=wan_vae needs codec.vae_path: a local AutoencoderKLWan directory "
                             "(as written by save_pretrained, e.g. <Wan2.1-T2V-1.3B-Diffusers>/vae)")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"codec.vae_path={path} is not a directory")
        self.vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype).to(device).eval()
        config = self.vae.config
        self.latent_channels = config.z_dim
        self.spatial_stride = 2 ** (len(config.dim_mult) - 1)
        self.temporal_stride = 2 ** sum(bool(t) for t in config.temperal_downsample)
        shape = (1, config.z_dim, 1, 1, 1)
        self.latents_mean = torch.tensor(config.latents_mean).view(shape)
        self.latents_std = torch.tensor(config.latents_std).view(shape)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        posterior = self.vae.encode(video.to(param)).latent_dist
        latents = posterior.mode().float()
        return (latents - self.latents_mean.to(latents)) / self.latents_std.to(latents)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        raw = latents.float() * self.latents_std.to(latents.device) + self.latents_mean.to(latents.device)
        return self.vae.decode(raw.to(param)).sample.float().clamp(-1.0, 1.0)

    def num_video_frames(self, num_latent_frames: int) -> int:
        return 1 + (num_latent_frames - 1) * self.temporal_stride


def build_codec(cfg: CodecConfig, device: torch.device | str = "cpu") -> VideoCodec:
    if cfg.kind == "pixel":
        return PixelCodec(cfg.pixel_patch)
    if cfg.kind == "wan_vae":
        return WanVAECodec(cfg.vae_path, device=device)
    raise ValueError(f"codec.kind={cfg.kind!r}: choose pixel or wan_vae")


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> [B, T, H, W, 3] uint8 (what video files hold)."""
    pixels = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).contiguous()


def uint8_to_video(frames: torch.Tensor) -> torch.Tensor:
    """[B, T, H, W, 3] uint8 -> [B, 3, T, H, W] float in [-1, 1]."""
    return frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
