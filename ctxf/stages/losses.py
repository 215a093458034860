"""Losses of the training stages, on the target frames only."""

from __future__ import annotations

import torch

from ctxf.models.flow_matching import training_weight


def target_flow_loss(velocity: torch.Tensor, velocity_target: torch.Tensor, num_context: int,
                     timestep: torch.Tensor, num_train_timesteps: float) -> torch.Tensor:
    """Flow-matching MSE over the target frames of `[B, C, F, H, W]` (frames from `num_context`
    on), each sample weighted by `training_weight` of its timestep `[B]`; context frames never
    enter the loss."""
    error = (velocity[:, :, num_context:].float() - velocity_target[:, :, num_context:].float()) ** 2
    per_sample = error.flatten(1).mean(dim=1)
    return (training_weight(timestep, num_train_timesteps) * per_sample).mean()


def critic_flow_loss(velocity: torch.Tensor, velocity_target: torch.Tensor, num_context: int) -> torch.Tensor:
    """The critic's flow-matching MSE over the target frames only (frames from `num_context` on);
    the clean context frames are input, never scored."""
    error = velocity[:, :, num_context:].float() - velocity_target[:, :, num_context:].float()
    return error.square().mean()


def dmd_generator_loss(x: torch.Tensor, teacher_x0: torch.Tensor, critic_x0: torch.Tensor) -> torch.Tensor:
    """Distribution matching on the generated target `x [B, C, F, H, W]` (with its graph), given the
    teacher's guided and the critic's x0 predictions of a noised copy of it (no graph):

        grad = (critic_x0 - teacher_x0) / mean|x - teacher_x0|     (the mean per sample)
        loss = 0.5 * mse(x, stopgrad(x - grad))

    so d loss / d x = grad / x.numel(): x moves away from the critic's (the student's own)
    distribution towards the teacher's, at a step size normalised per sample."""
    with torch.no_grad():
        x_detached = x.detach().float()
        scale = (x_detached - teacher_x0.float()).abs().flatten(1).mean(dim=1)
        grad = (critic_x0.float() - teacher_x0.float()) / scale.view(-1, *([1] * (x.ndim - 1)))
        grad = torch.nan_to_num(grad)
        target = x_detached - grad
    return 0.5 * torch.nn.functional.mse_loss(x.float(), target)
