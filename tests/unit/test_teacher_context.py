"""What the teacher and the critic are given before the DMD window (memory, contiguous, full, none),
checked against a separate ctxf-generate-style stream and the memory policy's rules, and the
rollout-length curriculum against hand-computed values."""

from __future__ import annotations

import functools

import pytest
import torch

from ctxf.config import load_config
from ctxf.inference.generator import StreamingGenerator
from ctxf.memory.cache import build_memory
from ctxf.models.wan import WanDiT
from ctxf.stages.base import Runtime, TrainingMethod
from ctxf.stages.dmd import DistributionMatching, longest_rollout
from ctxf.stages.rollout import roll_out
from ctxf.stages.teacher_context import scored_input

WINDOW, START = 9, 18


@functools.lru_cache(maxsize=2)  # shared by the tests of this module; read-only
def _rollout(policy_overrides=()):
    cfg = load_config("tiny_context_dmd", ["memory.surprise_threshold=1.0", *policy_overrides])
    torch.manual_seed(5)
    model = WanDiT(cfg.model)
    text = torch.randn(2, cfg.text.max_length, cfg.model.text_dim)
    shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
    generator = StreamingGenerator(model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    rollout = roll_out(generator, text, shape, START + WINDOW, WINDOW, torch.Generator().manual_seed(9), [3] * 9)
    # oracle: ctxf-generate's streaming of the history alone, from the same noise
    reference = StreamingGenerator(model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    history = torch.cat(list(reference.stream(START, text, shape, seed=9)), dim=2)
    return cfg, rollout, history, reference.memory


def test_memory_context_is_sink_then_keyframes_then_fast_window_at_the_memorys_positions():
    cfg, rollout, history, memory = _rollout()
    scored = scored_input(rollout, "memory")
    segments = memory.segments
    indices = memory.frame_indices
    # threshold 1.0: every frame leaving the fast window becomes a keyframe (cosine < 1)
    assert segments == ["sink"] * 3 + ["slow"] * 9 + ["fast"] * 6
    assert indices == list(range(18))
    torch.testing.assert_close(scored.context, history[:, :, indices], rtol=0, atol=1e-6)
    # bounded positions: sink at 0..2, the rest contiguous up to the window, which starts at
    # min(18, rope_length 30 - window 9) = 18
    assert scored.positions.tolist() == list(range(27))
    assert rollout.memory.segments == segments


def test_memory_context_with_few_keyframes_holds_only_what_the_memory_kept():
    cfg, rollout, history, memory = _rollout(("memory.policy=uniform", "memory.uniform_stride=4"))
    scored = scored_input(rollout, "memory")
    # uniform stride 4 from frame 3: of the frames 3..11 that left the fast window, 3, 7 and 11 are keyframes
    assert memory.frame_indices == [0, 1, 2, 3, 7, 11, 12, 13, 14, 15, 16, 17]
    torch.testing.assert_close(scored.context, history[:, :, memory.frame_indices], rtol=0, atol=1e-6)
    # sink 0..2; the 9 others end right before the window's anchor 18: 9..17
    assert scored.positions.tolist() == [0, 1, 2] + list(range(9, 18)) + list(range(18, 27))


def test_contiguous_full_and_none_contexts():
    cfg, rollout, history, _ = _rollout()
    contiguous = scored_input(rollout, "contiguous", contiguous_frames=6)
    torch.testing.assert_close(contiguous.context, history[:, :, 12:18], rtol=0, atol=1e-6)
    assert contiguous.positions.tolist() == list(range(15))
    full = scored_input(rollout, "full")
    torch.testing.assert_close(full.context, history, rtol=0, atol=1e-6)
    assert full.positions.tolist() == list(range(27))
    blind = scored_input(rollout, "none")
    assert blind.num_context == 0 and blind.positions.tolist() == list(range(9))


class _Recorder:
    """Stands in for the frozen teacher and the critic: records its input, predicts zero velocity."""

    def __init__(self):
        self.calls = []

    def __call__(self, latents, timestep, text, *, frame_positions=None):
        self.calls.append((latents.clone(), timestep.clone(), frame_positions.clone()))
        return torch.zeros_like(latents)


def test_the_teacher_receives_context_then_noisy_window():
    cfg, rollout, history, memory = _rollout()
    method = DistributionMatching.__new__(DistributionMatching)  # without engines: recorders stand in
    TrainingMethod.__init__(method, Runtime(config=cfg, device=torch.device("cpu"), data_parallel_rank=0,
                                            build_engine=None, sequence_parallel=None))
    method.teacher, critic = _Recorder(), _Recorder()
    method.engines = {"critic": critic}
    method.empty_text = torch.zeros(1, cfg.text.max_length, cfg.model.text_dim)
    scored = scored_input(rollout, "memory")
    text = torch.randn(2, cfg.text.max_length, cfg.model.text_dim)
    method.generator_loss(rollout.window, scored, text, torch.Generator().manual_seed(0))
    assert len(method.teacher.calls) == 2 and len(critic.calls) == 1  # conditional, unconditional; critic
    for latents, timestep, positions in method.teacher.calls + critic.calls:
        assert latents.shape[2] == 18 + WINDOW
        torch.testing.assert_close(latents[:, :, :18], history[:, :, memory.frame_indices], rtol=0, atol=1e-6)
        assert torch.count_nonzero(timestep[:, :18]) == 0 and bool((timestep[:, 18:] >= 20).all())
        assert positions.tolist() == list(range(27))
        noisy = latents[:, :, 18:]
        assert not torch.allclose(noisy, rollout.window.detach())  # the window arrives noised


def test_rollout_curriculum_grows_linearly_in_whole_chunks():
    cfg = load_config("tiny_context_dmd")  # 18 -> 27 over 20 steps, chunks of 3
    assert [longest_rollout(step, cfg) for step in (0, 6, 7, 10, 13, 14, 20, 500)] == [18, 18, 21, 21, 21, 24, 27, 27]
    method = DistributionMatching.__new__(DistributionMatching)
    method.config, method.block = cfg, 3
    method.runtime = Runtime(config=cfg, device=torch.device("cpu"), data_parallel_rank=1, build_engine=None,
                             sequence_parallel=None)
    method.grows_rollouts = True
    draws = {step: method.rollout_frames(step) for step in range(40)}
    assert all(9 <= frames <= longest_rollout(step, cfg) and frames % 3 == 0 for step, frames in draws.items())
    assert max(draws[s] for s in range(20, 40)) == 27 and len(set(draws.values())) > 3


def test_rollout_prefix_is_whole_chunks_of_the_clip_alike_on_every_rank():
    from ctxf.data.collate import Batch

    cfg = load_config("tiny_context_dmd", ["distill.prefix_frames=12"])
    latents = torch.randn(1, 12, 20, 8, 8)
    batch = Batch(latents=latents, text=torch.zeros(1, 4, 32), text_lengths=torch.tensor([4]), keys=["k"],
                  meta=[{}])

    def method(rank):
        method = DistributionMatching.__new__(DistributionMatching)
        method.config, method.block = cfg, 3
        method.runtime = Runtime(config=cfg, device=torch.device("cpu"), data_parallel_rank=rank, build_engine=None,
                                 sequence_parallel=None)
        return method

    counts = []
    for step in range(30):
        prefixes = [method(rank).prefix(batch, step) for rank in range(3)]
        assert all(torch.equal(p, prefixes[0]) for p in prefixes)
        counts.append(prefixes[0].shape[2])
        torch.testing.assert_close(prefixes[0], latents[:, :, :counts[-1]], rtol=0, atol=0)
    assert set(counts) <= {0, 3, 6, 9, 12} and len(set(counts)) >= 4
    short = Batch(latents=latents[:, :, :9], text=batch.text, text_lengths=batch.text_lengths, keys=["k"], meta=[{}])
    with pytest.raises(ValueError, match="distill.prefix_frames=12"):
        method(0).prefix(short, 0)
    cfg.distill.prefix_frames = 0
    assert method(0).prefix(batch, 0) is None
