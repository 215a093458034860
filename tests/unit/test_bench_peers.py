"""The peers' streaming drivers in benchmarks/bench_peers.py: chunk shapes, cache behaviour, and the
same latents as the diffusers pipelines they stand in for (4 chunks of 3 frames, random weights)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ctxf.config import load_config

REPO = Path(__file__).resolve().parents[2]
CHUNKS = 4


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_peers", REPO / "benchmarks" / "bench_peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through its module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup():
    cfg = load_config("tiny")
    block = cfg.video.num_frames_per_block
    text = torch.randn(1, cfg.text.max_length, cfg.model.text_dim, generator=torch.Generator().manual_seed(1))
    return cfg, block, CHUNKS * block, text


def pipeline_call_kwargs(cfg, frames, text):
    """Pipeline arguments for the same latent video: pixel sizes through diffusers' default VAE factors."""
    return dict(prompt_embeds=text, height=cfg.video.latent_height * 8, width=cfg.video.latent_width * 8,
                num_frames=(frames - 1) * 4 + 1, num_inference_steps=len(cfg.diffusion.denoising_steps),
                guidance_scale=1.0, output_type="latent")


@torch.no_grad()
def test_anyflow_stream_shapes_cache_and_pipeline_equality(bench, setup):
    from diffusers import AnyFlowFARPipeline, FlowMapEulerDiscreteScheduler

    cfg, block, frames, text = setup
    model = bench.build_anyflow(cfg, frames)
    noise = bench.rollout_noise(cfg, frames, seed=0)
    chunks = list(bench.anyflow_stream(model, cfg, text, noise))

    full, compressed = block * cfg.frame_seq_len, block * 4  # tokens of a chunk at patch (1,2,2) / (1,4,4)
    token_bytes = cfg.model.num_layers * 2 * cfg.model.num_heads * cfg.model.head_dim * 4
    for index, chunk in enumerate(chunks):
        assert chunk.latents.shape == (1, cfg.model.in_channels, block, 8, 8)
        assert chunk.end_frame == (index + 1) * block
        # after its cache pass: the last 2 chunks at full resolution, every older one compressed
        cached = min(index + 1, 2) * full + max(index - 1, 0) * compressed
        assert chunk.cache_bytes == cached * token_bytes
        # a denoising step reads what the previous chunk's pass cached, plus the chunk itself
        read = min(index, 2) * full + max(index - 2, 0) * compressed
        assert chunk.keys_attended == read + full
        assert chunk.tokens_computed == 4 * full + cached
    assert chunks[-1].cache_bytes > chunks[-2].cache_bytes  # the compressed part keeps growing

    pipe = AnyFlowFARPipeline(tokenizer=None, text_encoder=None, transformer=model, vae=None,
                              scheduler=FlowMapEulerDiscreteScheduler(shift=cfg.diffusion.shift))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(latents=noise, chunk_partition=[block] * CHUNKS, **pipeline_call_kwargs(cfg, frames, text)).frames
    torch.testing.assert_close(torch.cat([c.latents for c in chunks], dim=2), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_skyreels_stream_recomputes_prefix_and_matches_pipeline(bench, setup):
    from diffusers import SkyReelsV2DiffusionForcingPipeline, UniPCMultistepScheduler

    cfg, block, frames, text = setup
    model = bench.build_skyreels(cfg, frames)
    noise = bench.rollout_noise(cfg, frames, seed=0)
    chunks = list(bench.skyreels_stream(model, cfg, text, noise))

    assert len(chunks) == CHUNKS
    for index, chunk in enumerate(chunks):
        assert chunk.latents.shape == (1, cfg.model.in_channels, block, 8, 8)
        assert chunk.end_frame == (index + 1) * block
        assert chunk.cache_bytes == 0
        prefix = chunk.end_frame * cfg.frame_seq_len  # all frames so far, every step
        assert chunk.keys_attended == prefix and chunk.tokens_computed == 4 * prefix

    # the pipeline feeds its whole window, future noise blocks included; block-causal attention
    # makes the prefix-only forwards give the same video
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=cfg.diffusion.shift)
    pipe = SkyReelsV2DiffusionForcingPipeline(tokenizer=None, text_encoder=None, transformer=model, vae=None,
                                              scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt=None, generator=torch.Generator().manual_seed(0), ar_step=4, causal_block_size=block,
                    **pipeline_call_kwargs(cfg, frames, text)).frames
    torch.testing.assert_close(torch.cat([c.latents for c in chunks], dim=2), expected, atol=1e-5, rtol=1e-5)
