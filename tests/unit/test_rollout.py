"""The training rollout: the same chunks as ctxf-generate, gradient only through the exit step of
the last window's chunks, exit steps shared by every rank, the memory recorded before the window."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ctxf.ckpt.checkpoint_files import save_diffusers_dir
from ctxf.config import load_config
from ctxf.inference.cli import main as ctxf_generate
from ctxf.inference.generator import StreamingGenerator
from ctxf.memory.cache import build_memory
from ctxf.models.text_encoder import build_text_encoder
from ctxf.models.wan import WanDiT
from ctxf.stages.base import Runtime
from ctxf.stages.rollout import draw_exit_steps, roll_out


def _setup(overrides=()):
    cfg = load_config("tiny", list(overrides))
    torch.manual_seed(3)
    model = WanDiT(cfg.model)
    generator = StreamingGenerator(model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    text = build_text_encoder(cfg.text, cfg.model.text_dim).encode([cfg.inference.prompt])
    shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
    return cfg, model, generator, text, shape


def test_rollout_chunks_equal_ctxf_generate(tmp_path):
    cfg, model, generator, text, shape = _setup()
    save_diffusers_dir(model, tmp_path / "student")
    frames = 12  # 3 s at 4 latent frames/s
    assert ctxf_generate(["--checkpoint", str(tmp_path / "student"), "--seconds", "3", "--output-dir",
                          str(tmp_path / "out"), "--seed", "7"]) == 0
    generated = load_file(tmp_path / "out" / "latents.safetensors")["latents"]
    last = len(generator.timesteps) - 1
    rollout = roll_out(generator, text, shape, frames, window_frames=6, noise=torch.Generator().manual_seed(7),
                       exit_steps=[last] * 4)
    assert generated.shape == rollout.latents.shape
    torch.testing.assert_close(rollout.latents.detach(), generated, rtol=0, atol=1e-6)


def test_only_the_exit_step_of_the_last_window_keeps_a_graph():
    cfg, model, generator, text, shape = _setup()
    forwards = []
    model.register_forward_hook(lambda module, args, out: forwards.append(torch.is_grad_enabled()))
    exit_steps = [0, 3, 1, 2, 3]
    rollout = roll_out(generator, text, shape, 15, window_frames=6, noise=torch.Generator().manual_seed(0),
                       exit_steps=exit_steps)
    # per chunk: exit_step + 1 denoising forwards and one refresh pass
    assert len(forwards) == sum(e + 2 for e in exit_steps)
    assert sum(forwards) == 2  # one forward with gradient per window chunk: their exit steps
    assert not rollout.history.requires_grad and rollout.window.requires_grad
    rollout.window.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_exit_step_is_the_same_on_every_rank_and_varies_with_the_step():
    cfg = load_config("tiny")

    def runtime(rank):
        return Runtime(config=cfg, device=torch.device("cpu"), data_parallel_rank=rank, build_engine=None,
                       sequence_parallel=None)

    draws = [draw_exit_steps(6, 4, runtime(rank).shared_generator(5, "exit")) for rank in range(4)]
    assert all(d == draws[0] for d in draws)
    later = [draw_exit_steps(6, 4, runtime(0).shared_generator(step, "exit")) for step in range(6, 12)]
    assert any(d != draws[0] for d in later)
    assert all(0 <= e < 4 for d in later for e in d)


def test_memory_snapshot_is_the_memory_before_the_window():
    cfg, model, generator, text, shape = _setup(["memory.policy=sink_local", "memory.window_frames=6"])
    rollout = roll_out(generator, text, shape, 18, window_frames=6, noise=torch.Generator().manual_seed(2),
                       exit_steps=[3] * 6)
    # sink 3 + the 6 frames right before the window (frame 12)
    assert rollout.memory.frame_indices == [0, 1, 2, 6, 7, 8, 9, 10, 11]
    assert rollout.memory.segments == ["sink"] * 3 + ["window"] * 6
    assert rollout.memory.key_positions.tolist() == [0, 1, 2, 6, 7, 8, 9, 10, 11]
    assert rollout.memory.window_positions.tolist() == list(range(12, 18))


def test_rollout_continues_a_prefix_as_ctxf_generate_does():
    cfg, model, generator, text, shape = _setup()
    prefix = torch.randn(1, *shape[:1], 6, *shape[1:], generator=torch.Generator().manual_seed(5))
    last = len(generator.timesteps) - 1
    rollout = roll_out(generator, text, shape, 9, window_frames=3, noise=torch.Generator().manual_seed(8),
                       exit_steps=[last] * 3, prefix=prefix)
    assert rollout.window_start == 12 and rollout.latents.shape[2] == 15
    assert torch.equal(rollout.history[:, :, :6], prefix)
    # the inference path: the prefix prefilled, then three chunks streamed with the same noise
    reference = StreamingGenerator(model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    reference.prefill(prefix, text)
    noise = torch.Generator().manual_seed(8)
    streamed = torch.cat([reference.generate_chunk(text, shape, noise) for _ in range(3)], dim=2)
    torch.testing.assert_close(rollout.latents[:, :, 6:].detach(), streamed, rtol=0, atol=1e-6)
    # the memory before the window counts the prefix's frames (absolute indices 0..11)
    assert rollout.memory.frame_indices[:3] == [0, 1, 2] and max(rollout.memory.frame_indices) == 11
    torch.testing.assert_close(rollout.history[:, :, rollout.memory.frame_indices[:3]], prefix[:, :, :3])


def test_a_prefix_of_part_of_a_chunk_is_refused():
    cfg, model, generator, text, shape = _setup()
    prefix = torch.zeros(1, shape[0], 4, *shape[1:])
    with pytest.raises(ValueError, match="not whole chunks"):
        roll_out(generator, text, shape, 3, window_frames=3, noise=torch.Generator().manual_seed(0),
                 exit_steps=[0], prefix=prefix)
