"""Classifier-free guidance: the hand formula, and no unconditional forward at scale 1."""

from __future__ import annotations

import torch

from ctxf.stages.guidance import guided


def test_guidance_extrapolates_from_the_unconditional_prediction():
    conditional, unconditional = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    # u + 3 (c - u): 1 + 3 * 1 = 4 and 1 + 3 * (-2) = -5
    assert torch.equal(guided(conditional, lambda: unconditional, 3.0), torch.tensor([4.0, -5.0]))
    assert torch.equal(guided(conditional, lambda: unconditional, 0.0), unconditional)


def test_scale_one_is_the_conditional_prediction_without_an_unconditional_forward():
    calls = []

    def unconditional():
        calls.append(1)
        return torch.zeros(2)

    conditional = torch.tensor([0.3, 0.7])
    assert guided(conditional, unconditional, 1.0) is conditional
    assert not calls
    guided(conditional, unconditional, 1.5)
    assert calls == [1]
