"""Flow-matching noise/velocity math and the shifted, warped few-step schedule (docs/method.md).

Time convention: sigma in [0, 1], timestep = num_train_timesteps * sigma.
    x_t = (1 - sigma) x0 + sigma * noise,      velocity target = noise - x0.
The shift s' = k s / (1 + (k - 1) s) is the one diffusers' `FlowMatchEulerDiscreteScheduler`
applies (tests check against it); warping maps the few-step timesteps [1000, 750, 500, 250]
through it to about [1000, 937.5, 833.3, 625].
"""

from __future__ import annotations

import math

import torch

from ctxf.config import DiffusionConfig


def shift_sigma(sigma: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    return shift * sigma / (1 + (shift - 1) * sigma)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t for `sigma` of shape [B] or [B, F] (broadcast over the rest of `[B, C, F, H, W]`)."""
    return (1 - _expand(sigma, x0)) * x0 + _expand(sigma, x0) * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x_t - _expand(sigma, x_t) * velocity


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1, 1]; per-frame [B, F] -> [B, 1, F, 1, 1] (latents are [B, C, F, H, W])."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 1:
        return sigma.view(-1, *([1] * (like.ndim - 1)))
    return sigma[:, None, :, None, None]


def sampling_timesteps(cfg: DiffusionConfig) -> list[float]:
    """The few-step timesteps, warped through the shift when `warp_denoising_steps`."""
    steps = [float(s) for s in cfg.denoising_steps]
    if not cfg.warp_denoising_steps:
        return steps
    total = cfg.num_train_timesteps
    return [total * shift_sigma(s / total, cfg.shift) for s in steps]


def training_weight(timestep: torch.Tensor, num_train_timesteps: float = 1000.0) -> torch.Tensor:
    """Per-sample loss weight of a timestep: the bell over t that Wan's flow-matching training uses,
    exp(-2 ((t - T/2) / T)^2), normalised so its mean over t uniform in [0, T] is 1."""
    normalised = timestep.float() / num_train_timesteps - 0.5
    # mean of exp(-2 u^2) for u uniform in [-1/2, 1/2] = sqrt(pi/2) * erf(1/sqrt(2))
    mean = math.sqrt(math.pi / 2) * math.erf(1 / math.sqrt(2))
    return torch.exp(-2 * normalised ** 2) / mean


def sample_sigma(batch: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Training noise levels `[B]`: uniform in (0, 1), then shifted."""
    return shift_sigma(torch.rand(batch, generator=generator), shift)


def sample_dmd_timestep(batch: int, shift: float, generator: torch.Generator, min_timestep: float,
                        max_timestep: float, num_train_timesteps: float = 1000.0) -> torch.Tensor:
    """DMD's timesteps `[B]`: uniform in (0, T), shifted, clamped to [min_timestep, max_timestep]."""
    sigma = shift_sigma(torch.rand(batch, generator=generator), shift)
    return (sigma * num_train_timesteps).clamp(min_timestep, max_timestep)
