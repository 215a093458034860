"""Stage 0 pieces: the context layout, the target-only loss, error recycling, the timestep weight."""

from __future__ import annotations

import math

import pytest
import torch

from ctxf.config import load_config
from ctxf.models.flow_matching import training_weight
from ctxf.models.wan import WanDiT
from ctxf.stages.config import TeacherStageConfig
from ctxf.stages.context_layout import layout_at, sample_layout
from ctxf.stages.error_recycling import ErrorBuffer
from ctxf.stages.losses import target_flow_loss


def test_layout_orders_sink_slow_recent_target():
    cfg = TeacherStageConfig(num_sink_frames=3, num_slow_frames=4, slow_stride=5, num_recent_frames=2,
                             num_target_frames=3)
    layout = layout_at(30, cfg)
    assert layout.sink == [0, 1, 2]
    assert layout.recent == [28, 29]
    assert layout.target == [30, 31, 32]
    assert layout.slow == [8, 13, 18, 23]  # every 5th frame going back from 28, at most 4
    assert layout.frames == [0, 1, 2, 8, 13, 18, 23, 28, 29, 30, 31, 32]


def test_layout_has_fewer_slow_frames_when_history_is_short():
    cfg = TeacherStageConfig(num_sink_frames=3, num_slow_frames=12, slow_stride=4, num_recent_frames=6,
                             num_target_frames=9)
    layout = layout_at(9, cfg)  # recent starts at 3: no room for slow frames after the sink
    assert layout.slow == []
    assert layout_at(20, cfg).slow == [6, 10]


def test_sampled_layouts_fit_the_clip_and_refuse_short_clips():
    cfg = TeacherStageConfig(num_sink_frames=3, num_slow_frames=6, slow_stride=4, num_recent_frames=6,
                             num_target_frames=9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        layout = sample_layout(40, cfg, generator)
        assert layout.target[-1] < 40 and layout.recent[0] >= 3
        assert layout.frames == sorted(layout.frames) and len(set(layout.frames)) == len(layout.frames)
    with pytest.raises(ValueError, match="shorter than the teacher"):
        sample_layout(17, cfg, generator)


def test_loss_ignores_context_targets_and_context_inputs_change_the_prediction():
    cfg = load_config("tiny")
    model = WanDiT(cfg.model)
    num_context, frames = 4, 7
    latents = torch.randn(1, cfg.model.in_channels, frames, 8, 8)
    text = torch.randn(1, 16, cfg.model.text_dim)
    timestep = torch.tensor([400.0])
    frame_t = torch.cat([torch.zeros(1, num_context), timestep[:, None].expand(1, frames - num_context)], 1)
    targets = torch.randn_like(latents)

    def loss_and_grads(inputs, velocity_targets):
        model.zero_grad()
        loss = target_flow_loss(model(inputs, frame_t, text), velocity_targets, num_context, timestep, 1000.0)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = loss_and_grads(latents, targets)
    perturbed = targets.clone()
    perturbed[:, :, :num_context] += 100.0
    loss2, grads2 = loss_and_grads(latents, perturbed)
    assert torch.equal(loss, loss2)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads2))

    with torch.no_grad():
        before = model(latents, frame_t, text)[:, :, num_context:]
        changed = latents.clone()
        changed[:, :, 1] += 1.0
        after = model(changed, frame_t, text)[:, :, num_context:]
    assert (before - after).abs().max() > 1e-4


def test_loss_is_the_weighted_mse_over_target_frames():
    velocity = torch.zeros(2, 1, 3, 1, 1)
    target = torch.zeros(2, 1, 3, 1, 1)
    target[0, 0, 2] = 2.0  # sample 0: error 4 on one of 2 target frames -> mse 2
    target[1, 0, 1:] = 1.0  # sample 1: error 1 on both -> mse 1
    timestep = torch.tensor([500.0, 0.0])
    loss = target_flow_loss(velocity, target, num_context=1, timestep=timestep, num_train_timesteps=1000.0)
    norm = math.sqrt(math.pi / 2) * math.erf(1 / math.sqrt(2))
    expected = (2.0 * 1.0 / norm + 1.0 * math.exp(-0.5) / norm) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_training_weight_averages_one_and_peaks_mid_schedule():
    t = torch.linspace(0, 1000, 20001)
    weight = training_weight(t)
    assert weight.mean().item() == pytest.approx(1.0, abs=1e-4)
    coarse = training_weight(torch.linspace(0, 1000, 11))
    assert int(coarse.argmax()) == 5 and coarse[0] == pytest.approx(coarse[10])
    assert coarse[5] / coarse[0] == pytest.approx(math.exp(0.5), rel=1e-5)


def test_error_buffer_bins_and_ring():
    buffer = ErrorBuffer(num_bins=4, capacity=2)
    assert [buffer.bin_of(t) for t in (0, 249, 250, 999, 1000)] == [0, 0, 1, 3, 3]
    errors = torch.arange(2 * 3, dtype=torch.float32).view(1, 1, 6, 1, 1)[:, :, :3].expand(2, 1, 3, 1, 1).clone()
    errors[1] += 10
    buffer.push(torch.tensor([100.0, 900.0]), errors)
    assert [len(r) for r in buffer.frames] == [2, 0, 0, 2]  # 3 frames into a ring of 2
    assert [f.item() for f in buffer.frames[0]] == [2.0, 1.0]  # the third overwrote the first
    assert [f.item() for f in buffer.frames[3]] == [12.0, 11.0]


def test_context_injection_adds_exactly_stored_errors_from_one_bin():
    buffer = ErrorBuffer(num_bins=4, capacity=8)
    for value, timestep in ((1.0, 100.0), (2.0, 110.0), (100.0, 800.0)):
        buffer.push(torch.tensor([timestep]), torch.full((1, 2, 1, 3, 3), value))
    context = torch.zeros(3, 2, 5, 3, 3)
    out = buffer.inject_context(context, prob=1.0, generator=torch.Generator().manual_seed(0))
    for sample in out:
        frame_values = {float(v) for v in sample.flatten().unique()}
        assert frame_values <= {1.0, 2.0} or frame_values == {100.0}  # one bin per sample
        for frame in sample.unbind(1):
            assert frame.unique().numel() == 1  # each frame got one whole stored error
    untouched = buffer.inject_context(context, prob=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(untouched, context)


def test_noise_injection_uses_the_bin_of_each_samples_timestep():
    buffer = ErrorBuffer(num_bins=4, capacity=8)
    buffer.push(torch.tensor([100.0]), torch.full((1, 1, 1, 2, 2), 1.0))
    buffer.push(torch.tensor([600.0]), torch.full((1, 1, 1, 2, 2), 7.0))
    noise = torch.zeros(3, 1, 4, 2, 2)
    out = buffer.inject_noise(noise, torch.tensor([50.0, 700.0, 300.0]), prob=1.0,
                              generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[0], torch.full_like(out[0], 1.0))
    assert torch.equal(out[1], torch.full_like(out[1], 7.0))
    assert torch.equal(out[2], torch.zeros_like(out[2]))  # bin 1 holds nothing: no injection


def test_error_buffer_state_round_trips():
    buffer = ErrorBuffer(num_bins=2, capacity=3)
    buffer.push(torch.tensor([10.0, 900.0]), torch.randn(2, 1, 4, 2, 2))
    copy = ErrorBuffer(num_bins=2, capacity=3)
    copy.load_state_dict(buffer.state_dict())
    assert copy.next_slot == buffer.next_slot
    assert all(torch.equal(a, b) for ra, rb in zip(copy.frames, buffer.frames) for a, b in zip(ra, rb))
    with pytest.raises(ValueError, match="num_error_bins"):
        ErrorBuffer(num_bins=3, capacity=3).load_state_dict(buffer.state_dict())


def _caption_dropper(probability: float, empty: torch.Tensor | None):
    """A ContextTeacher with only what `_drop_captions` reads (no engine: nothing else is called)."""
    from ctxf.stages.teacher import ContextTeacher

    teacher = ContextTeacher.__new__(ContextTeacher)
    teacher.stage_cfg, teacher.empty_text = TeacherStageConfig(caption_dropout=probability), empty
    return teacher


def test_caption_dropout_swaps_whole_captions_for_the_empty_one_at_its_rate():
    from ctxf.models.text_encoder import build_text_encoder

    cfg = load_config("tiny")
    empty = build_text_encoder(cfg.text, cfg.model.text_dim).encode([""])
    captions = build_text_encoder(cfg.text, cfg.model.text_dim).encode(["a red square drifts"] * 4000)
    out = _caption_dropper(0.25, empty)._drop_captions(captions, torch.Generator().manual_seed(0))
    dropped = (out == empty).flatten(1).all(dim=1)
    kept = (out == captions).flatten(1).all(dim=1)
    assert bool((dropped ^ kept).all())  # every caption is whole: its own or the empty one
    assert abs(float(dropped.float().mean()) - 0.25) < 0.03  # binomial sd 0.007
    assert bool((_caption_dropper(1.0, empty)._drop_captions(captions[:8], torch.Generator()) == empty).all())
    assert torch.equal(_caption_dropper(0.0, None)._drop_captions(captions[:8], torch.Generator()), captions[:8])


def test_caption_dropout_is_a_probability():
    from ctxf.config import ConfigError

    with pytest.raises(ConfigError, match="teacher.caption_dropout"):
        load_config("tiny", ["teacher.caption_dropout=1.5"])


def test_caption_dropout_without_a_text_encoder_names_both_fixes():
    from ctxf.stages.teacher import ContextTeacher

    teacher = ContextTeacher.__new__(ContextTeacher)
    teacher.config = load_config("tiny", ["text.kind=umt5", "teacher.caption_dropout=0.1"])
    with pytest.raises(ValueError, match="text.encoder_path.*teacher.caption_dropout=0"):
        teacher._empty_caption()
