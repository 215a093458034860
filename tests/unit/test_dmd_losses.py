"""DMD generator and critic losses against hand computations."""

from __future__ import annotations

import pytest
import torch

from ctxf.models.flow_matching import sample_dmd_timestep
from ctxf.stages.losses import critic_flow_loss, dmd_generator_loss


def _frames(*values):
    """[B, 1, F, 1, 1] from per-sample lists of frame values."""
    return torch.tensor(values, dtype=torch.float32)[:, None, :, None, None]


def test_generator_gradient_is_the_normalised_score_difference():
    x = _frames([1.0, 3.0], [0.0, 0.0]).requires_grad_()
    teacher = _frames([0.0, 1.0], [2.0, 2.0])
    critic = _frames([2.0, 2.0], [1.0, 3.0])
    loss = dmd_generator_loss(x, teacher, critic)
    loss.backward()
    # sample 0: mean|x - teacher| = (1 + 2) / 2 = 1.5, grad = ([2, 2] - [0, 1]) / 1.5 = [4/3, 2/3]
    # sample 1: mean|x - teacher| = 2, grad = ([1, 3] - [2, 2]) / 2 = [-1/2, 1/2]
    # loss = 0.5 * mean(grad^2) over the 4 elements; d loss / d x = grad / 4
    grad = [[4 / 3, 2 / 3], [-0.5, 0.5]]
    expected_loss = 0.5 * ((4 / 3) ** 2 + (2 / 3) ** 2 + 0.25 + 0.25) / 4
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    torch.testing.assert_close(x.grad, _frames(*grad) / 4)


def test_generator_gradient_vanishes_when_critic_agrees_with_teacher():
    x = torch.randn(2, 3, 4, 2, 2, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 2, 2)
    dmd_generator_loss(x, teacher, teacher.clone()).backward()
    assert torch.count_nonzero(x.grad) == 0


def test_critic_loss_ignores_context_tokens():
    velocity = torch.randn(2, 3, 5, 2, 2, requires_grad=True)
    target = torch.randn(2, 3, 5, 2, 2)
    loss = critic_flow_loss(velocity, target, num_context=2)
    loss.backward()
    changed_velocity, changed_target = velocity.detach().clone(), target.clone()
    changed_velocity[:, :, :2] += 10.0
    changed_target[:, :, :2] -= 7.0
    assert critic_flow_loss(changed_velocity, changed_target, 2).item() == pytest.approx(loss.item())
    assert torch.count_nonzero(velocity.grad[:, :, :2]) == 0
    # the target part is a plain mean squared error over its 2 * 3 * 3 * 2 * 2 elements
    error = velocity.detach()[:, :, 2:] - target[:, :, 2:]
    assert loss.item() == pytest.approx(float((error ** 2).sum() / 72), rel=1e-6)
    torch.testing.assert_close(velocity.grad[:, :, 2:], 2 * error / 72)


def test_dmd_timesteps_are_shifted_and_clamped():
    generator = torch.Generator().manual_seed(0)
    u = torch.rand(10000, generator=torch.Generator().manual_seed(0))
    t = sample_dmd_timestep(10000, 5.0, generator, 20.0, 980.0)
    expected = (5 * u / (1 + 4 * u) * 1000).clamp(20, 980)
    torch.testing.assert_close(t, expected)
    assert t.min() == 20.0 and t.max() == 980.0  # both bounds bite at shift 5 over 10k draws
