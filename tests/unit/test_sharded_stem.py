"""The pieces context parallelism shards with, on one process: embedding only some tokens gives
those tokens of the whole embedding (hidden, RoPE angles, frames), the output patches unpatchify
to the model's output, and a degree-1 `ShardedOutput` is the plain model's output."""

from __future__ import annotations

import torch

from ctxf.config import load_config
from ctxf.models.wan import WanDiT, patchify
from ctxf.parallel.context_parallel import ContextParallelModel
from ctxf.parallel.topology import ContextParallelGroups


def _model_and_inputs():
    config = load_config("tiny", ["video.latent_height=6", "video.latent_width=10"])  # 3 x 5 tokens a frame
    torch.manual_seed(0)
    model = WanDiT(config.model)
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, config.model.in_channels, 4, 6, 10, generator=generator)
    timestep = torch.rand(2, 4, generator=generator) * 1000
    text = torch.randn(2, config.text.max_length, config.model.text_dim, generator=generator)
    return model, latents, timestep, text


def test_embedding_some_tokens_equals_those_tokens_of_the_whole():
    model, latents, timestep, text = _model_and_inputs()
    index = torch.tensor([0, 7, 14, 15, 31, 59, 59])  # crosses frames; repeats the last like padding does
    whole = model.embed(latents, timestep, text, torch.tensor([5, 6, 9, 12]), num_frames_per_block=2)
    part = model.embed(latents, timestep, text, torch.tensor([5, 6, 9, 12]), num_frames_per_block=2,
                       token_index=index)
    torch.testing.assert_close(part.hidden, whole.hidden[:, index], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(part.rope_cos, whole.rope_cos[index])
    torch.testing.assert_close(part.rope_sin, whole.rope_sin[index])
    assert torch.equal(part.frame_index, whole.frame_index[index])
    assert torch.equal(part.query_blocks, whole.query_blocks[index])
    assert part.grid == whole.grid == (4, 3, 5)


def test_output_patches_unpatchify_to_the_output_and_patchify_inverts_it():
    model, latents, timestep, text = _model_and_inputs()
    with torch.no_grad():
        expected = model(latents, timestep, text)
        tokens = model.embed(latents, timestep, text)
        hidden, _ = model.run_blocks(tokens)
        patches = model.head(hidden, tokens)
    assert patches.shape == (2, 4 * 3 * 5, 2 * 2 * model.cfg.out_channels)
    torch.testing.assert_close(model.unpatchify(patches, tokens.grid), expected)
    torch.testing.assert_close(patchify(expected, (2, 2)), patches)


def test_degree_one_sharded_output_is_the_plain_output():
    model, latents, timestep, text = _model_and_inputs()
    single = ContextParallelGroups(group=None, ulysses=None, ring=None, degree=1, rank=0, pad_sequence=True)
    runner = ContextParallelModel(model, single)
    with torch.no_grad():
        expected = model(latents, timestep, text)
        sharded = runner(latents, timestep, text, gather_output=False)
    torch.testing.assert_close(sharded.gather(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sharded.take(expected), sharded.local, rtol=1e-5, atol=1e-6)
    assert bool(sharded.valid.all()) and sharded.frame_index.tolist() == [f for f in range(4) for _ in range(15)]
    assert torch.equal(sharded.sum_over_shards(sharded.local.sum()), sharded.local.sum())
