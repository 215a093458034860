"""Classifier-free guidance of a frozen teacher, shared by ODE-pair generation and DMD."""

from __future__ import annotations

from typing import Callable

import torch


def guided(conditional: torch.Tensor, unconditional: Callable[[], torch.Tensor], scale: float) -> torch.Tensor:
    """`u + scale (c - u)` of the conditional prediction `c` and the unconditional one `u`. At scale 1
    that is `c` itself, and `unconditional` (a teacher forward on the empty caption) is not called."""
    if scale == 1.0:
        return conditional
    base = unconditional()
    return base + scale * (conditional - base)
