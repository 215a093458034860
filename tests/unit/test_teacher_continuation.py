"""The stage-0 teacher's curtain continuation (`TeacherContinuation`): window by window over the
training context layout, each window from the Euler sampler stage 0 logs samples with.

The oracle is a scripted velocity model: it returns the exact flow velocity towards one clean
window (the last context frame repeated), so any correct Euler integration lands on that window,
and the expected context frames are written out by hand from the layout's definition."""

import numpy as np
import pytest
import torch

from ctxf.config import load_config
from ctxf.eval.continuation import TeacherContinuation, continuation_from_config
from data_pipeline.clip_encoding import ClipEncoder
from data_pipeline.curtain import CurtainSpec, make_clip

TOTAL = 1000.0


class CopyLastContextFrame(torch.nn.Module):
    """Velocity (x_t - x0) / sigma with x0 = the last clean context frame, for every window frame."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, latents, timestep, text):
        num_context = int((timestep[0] == 0).sum())
        context, window = latents[:, :, :num_context], latents[:, :, num_context:]
        self.calls.append((context.clone(), timestep.clone()))
        sigma = timestep[0, -1] / TOTAL
        x0 = context[:, :, -1:].expand_as(window)
        return torch.cat([torch.zeros_like(context), (window - x0) / sigma], dim=2)


def _setup():
    cfg = load_config("tiny")
    encoder = ClipEncoder(cfg)
    frames = make_clip(CurtainSpec(), 0, "heldout", 0).frames
    return cfg, encoder, frames


def test_windows_land_on_the_sampler_target_and_see_the_hand_derived_layout():
    cfg, encoder, frames = _setup()
    model = CopyLastContextFrame()
    prefix = frames[:40]
    out = TeacherContinuation(cfg, model, encoder).continue_video(prefix, 12, "a prompt")
    assert out.shape == (12, *prefix.shape[1:]) and out.dtype == np.uint8
    # every window copies its last context frame; the second window's last context frame is the first's last frame
    assert (out == prefix[-1]).all()
    steps = cfg.teacher.sample_steps
    assert len(model.calls) == 2 * steps, "two 9-frame windows for 12 frames, each in teacher.sample_steps forwards"
    latents = encoder.latents(prefix)[None]
    # sink 0..2, recent = the 6 frames before the target (34..39), slow one every 4 before those, at most 6
    first = [0, 1, 2, 10, 14, 18, 22, 26, 30, *range(34, 40)]
    context, timestep = model.calls[0]
    torch.testing.assert_close(context, latents[:, :, first], rtol=0, atol=0)
    assert timestep[0, :len(first)].eq(0).all() and timestep[0, len(first):].eq(TOTAL).all(), "first step at sigma 1"
    # second window starts at 49: recent 43..48 (generated frames 40..48 are copies of frame 39)
    second_context = model.calls[steps][0]
    expected = latents[:, :, [0, 1, 2, 19, 23, 27, 31, 35, 39, 39, 39, 39, 39, 39, 39]]
    torch.testing.assert_close(second_context, expected, rtol=0, atol=1e-6)


def test_generator_choice_is_checked():
    cfg, _, _ = _setup()
    with pytest.raises(ValueError, match="choose streaming or teacher"):
        continuation_from_config(cfg, "bidirectional")
