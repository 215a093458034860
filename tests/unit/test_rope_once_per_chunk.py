"""Rotating cached keys once per chunk is bit-identical to rotating them in every pass (acceptance 5)."""

import pytest
import torch

from ctxf.config import MEMORY_POLICIES, load_config
from ctxf.inference.generator import StreamingGenerator
from ctxf.memory.cache import build_memory
from ctxf.models.flow_matching import add_noise, predict_x0, sampling_timesteps
from ctxf.models.wan import WanDiT

NUM_FRAMES = 27  # 9 chunks: every policy evicts (capacities 6 / 7 frames below)
SMALL_MEMORY = ["memory.num_sink_frames=1", "memory.num_fast_frames=3", "memory.num_slow_frames=2",
                "memory.window_frames=6", "memory.rope_length=10", "memory.surprise_threshold=0.999",
                "diffusion.denoising_steps=[1000,500]"]


def setup(policy):
    cfg = load_config("tiny", [f"memory.policy={policy}", *SMALL_MEMORY])
    torch.manual_seed(0)
    model = WanDiT(cfg.model).eval()
    text = torch.randn(1, cfg.text.max_length, cfg.model.text_dim)
    shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
    return cfg, model, text, shape


@torch.no_grad()
def rotate_in_every_pass(cfg, model, text, shape):
    """The generator loop written out with un-rotated views: every forward rotates the cached keys
    of every layer itself (the behaviour before rotation moved to once per chunk)."""
    memory = build_memory(cfg)
    timesteps, total = sampling_timesteps(cfg.diffusion), float(cfg.diffusion.num_train_timesteps)
    block = cfg.video.num_frames_per_block
    generator = torch.Generator().manual_seed(0)
    chunks = []
    for _ in range(NUM_FRAMES // block):
        view = memory.view(block)
        assert not view.keys_rotated
        x = torch.randn(1, *shape[:1], block, *shape[1:], generator=generator)
        for step, timestep in enumerate(timesteps):
            t = torch.full((1,), timestep)
            x0 = predict_x0(x, model(x, t, text, memory=view), t / total)
            if step + 1 < len(timesteps):
                noise = torch.randn(1, *shape[:1], block, *shape[1:], generator=generator)
                x = add_noise(x0, noise, torch.full((1,), timesteps[step + 1] / total))
        _, kv = model(x0, torch.zeros(1), text, memory=view, return_kv=True)
        memory.append(kv, block)
        chunks.append(x0)
    return torch.cat(chunks, dim=2), memory


@pytest.mark.parametrize("policy", MEMORY_POLICIES)
def test_rotation_once_per_chunk_is_bit_identical(policy):
    cfg, model, text, shape = setup(policy)
    expected, expected_memory = rotate_in_every_pass(cfg, model, text, shape)
    generator = StreamingGenerator(model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    generated = torch.cat(list(generator.stream(NUM_FRAMES, text, shape, seed=0)), dim=2)
    assert torch.equal(generated, expected)
    assert generator.memory.frame_indices == expected_memory.frame_indices
    if policy != "full":
        assert len(generator.memory.frame_indices) < NUM_FRAMES - cfg.video.num_frames_per_block  # it evicted
    assert max(s.num_cached_frames for s in generator.stats) > 0


def test_rotated_view_holds_keys_at_their_positions():
    """rotate_memory against RoPE computed by hand for one cached frame (a plain complex rotation)."""
    cfg, model, text, shape = setup("full")
    memory = build_memory(cfg)
    with torch.no_grad():
        _, kv = model(torch.randn(1, *shape[:1], 3, *shape[1:]), torch.zeros(1), text, return_kv=True)
    memory.append(kv, 3)
    view = memory.view(3)
    rotated = model.rotate_memory(view, *shape[1:])
    assert rotated.keys_rotated and not view.keys_rotated
    assert model.rotate_memory(rotated, *shape[1:]) is rotated  # never rotated twice
    head_dim = cfg.model.head_dim
    t_dim = head_dim - 4 * (head_dim // 6)
    frame, row, col, tokens_per_frame, grid_w = 2, 1, 3, 16, 4
    token = frame * tokens_per_frame + row * grid_w + col
    key = view.keys[0][0, token, 0].double()  # un-rotated [head_dim]
    spatial = 2 * (head_dim // 6)
    freqs = [1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d) for d in (t_dim, spatial, spatial)]
    angles = torch.cat([frame * freqs[0], row * freqs[1], col * freqs[2]])
    by_hand = torch.view_as_real(torch.view_as_complex(key.view(-1, 2).contiguous()) * torch.polar(
        torch.ones_like(angles), angles)).flatten()
    assert (rotated.keys[0][0, token, 0].double() - by_hand).abs().max() <= 1e-5
