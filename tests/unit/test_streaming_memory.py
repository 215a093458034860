"""A long rollout stays bounded under Slow-Fast Memory (acceptance 4)."""

import pytest
import torch

from ctxf.config import load_config
from ctxf.inference.generator import StreamingGenerator
from ctxf.memory.cache import build_memory
from ctxf.models.wan import WanDiT

NUM_FRAMES = 480  # 2 minutes of latent frames at 4 per second


def rollout(overrides, num_frames=NUM_FRAMES):
    cfg = load_config("tiny", ["diffusion.denoising_steps=[1000]", *overrides])
    model = WanDiT(cfg.model).eval()
    generator = StreamingGenerator(model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    text = torch.randn(1, cfg.text.max_length, cfg.model.text_dim)
    shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
    frames = sum(chunk.shape[2] for chunk in generator.stream(num_frames, text, shape, seed=0))
    return cfg, generator, frames


@pytest.mark.parametrize("threshold", [1.0, 0.95])
def test_slow_fast_cache_and_keys_stop_growing(threshold):
    cfg, generator, frames = rollout([f"memory.surprise_threshold={threshold}"])
    assert frames >= NUM_FRAMES
    stats = generator.stats
    capacity = cfg.memory_capacity_frames()
    frame_bytes = stats[0].cache_bytes // stats[0].num_frames  # the first chunk's frames, all kept
    cached = [s.num_cached_frames for s in stats]
    assert max(cached) <= capacity
    assert max(s.cache_bytes for s in stats) <= capacity * frame_bytes
    # once the memory is full it stays the same size: the second half of the rollout is flat
    late = stats[len(stats) // 2:]
    assert len({s.cache_bytes for s in late}) == 1 and len({s.num_cached_frames for s in late}) == 1
    if threshold == 1.0:  # every non-identical frame is surprising, so the slow memory fills
        assert cached[-1] == capacity
    assert max(s.max_rope_position for s in stats) <= cfg.memory.rope_length - 1


def test_full_history_grows_linearly_with_absolute_positions():
    cfg, generator, _ = rollout(["memory.policy=full"], num_frames=120)
    stats = generator.stats
    assert [s.num_cached_frames for s in stats] == [3 * i for i in range(len(stats))]
    assert stats[-1].max_rope_position == 119
    per_frame = stats[0].cache_bytes // 3
    assert [s.cache_bytes for s in stats] == [per_frame * 3 * (i + 1) for i in range(len(stats))]
