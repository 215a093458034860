"""Flow-matching math against diffusers' scheduler and hand-computed values."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ctxf.config import DiffusionConfig
from ctxf.models.flow_matching import add_noise, predict_x0, sampling_timesteps, shift_sigma, velocity_target


def test_shift_matches_diffusers_scheduler():
    # the training table: 1000 sigmas, before set_timesteps re-spaces them for sampling
    unshifted = FlowMatchEulerDiscreteScheduler(shift=1.0).sigmas
    shifted = FlowMatchEulerDiscreteScheduler(shift=5.0).sigmas
    assert len(shifted) == 1000
    assert torch.allclose(shift_sigma(unshifted, 5.0), shifted, atol=1e-6)


def test_warped_few_step_schedule_hand_computed():
    # s' = 5 s / (1 + 4 s): 0.75 -> 3.75 / 4, 0.5 -> 2.5 / 3, 0.25 -> 1.25 / 2
    assert sampling_timesteps(DiffusionConfig()) == pytest.approx([1000.0, 937.5, 2500.0 / 3, 625.0])
    assert sampling_timesteps(DiffusionConfig(warp_denoising_steps=False)) == [1000.0, 750.0, 500.0, 250.0]


def test_noise_velocity_and_x0_are_consistent():
    x0, noise = torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 4, 5, 6)
    sigma = torch.tensor([0.3, 0.9])
    x_t = add_noise(x0, noise, sigma)
    assert torch.allclose(x_t[1], 0.1 * x0[1] + 0.9 * noise[1], atol=1e-6)
    assert torch.allclose(predict_x0(x_t, velocity_target(x0, noise), sigma), x0, atol=1e-5)


def test_per_frame_sigma_broadcasts_over_frames():
    x0, noise = torch.zeros(1, 2, 3, 1, 1), torch.ones(1, 2, 3, 1, 1)
    x_t = add_noise(x0, noise, torch.tensor([[0.0, 0.5, 1.0]]))
    assert x_t[0, :, :, 0, 0].tolist() == [[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]
