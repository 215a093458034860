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
