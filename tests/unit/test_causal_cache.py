"""Block-causal generation through the KV cache equals one block-causal forward (acceptance 3)."""

import pytest
import torch

from ctxf.config import load_config
from ctxf.memory.cache import build_memory
from ctxf.models.attention import BlockMask, sdpa_attention
from ctxf.models.wan import WanDiT


def tiny(overrides=()):
    cfg = load_config("tiny", ["memory.policy=full", "model.num_layers=3", *overrides])
    return cfg, WanDiT(cfg.model).eval()


def chunked_through_cache(model, cfg, latents, timestep, text, block):
    memory = build_memory(cfg)
    outputs = []
    for start in range(0, latents.shape[2], block):
        frames = slice(start, start + block)
        out, kv = model(latents[:, :, frames], timestep[:, frames], text,
                        memory=memory.view(latents[:, :, frames].shape[2]), return_kv=True)
        memory.append(kv, out.shape[2])
        outputs.append(out)
    return torch.cat(outputs, dim=2)


@pytest.mark.parametrize("num_frames, overrides", [
    (9, []),
    (8, ["video.num_frames_per_block=2", "video.latent_width=4"]),  # H != W
    (7, []),  # last chunk shorter than a block
])
def test_cached_chunks_equal_one_block_causal_pass(num_frames, overrides):
    cfg, model = tiny(overrides)
    block = cfg.video.num_frames_per_block
    latents = torch.randn(2, cfg.model.in_channels, num_frames, cfg.video.latent_height, cfg.video.latent_width)
    timestep = torch.rand(2, num_frames) * 1000  # a different noise level per frame
    text = torch.randn(2, cfg.text.max_length, cfg.model.text_dim)
    with torch.no_grad():
        one_pass = model(latents, timestep, text, num_frames_per_block=block)
        cached = chunked_through_cache(model, cfg, latents, timestep, text, block)
    assert (one_pass - cached).abs().max() <= 1e-5


def test_block_causal_pass_ignores_future_chunks():
    """Independent of the cache: changing a later chunk must not change earlier outputs."""
    cfg, model = tiny()
    latents = torch.randn(1, cfg.model.in_channels, 9, 8, 8)
    text = torch.randn(1, cfg.text.max_length, cfg.model.text_dim)
    t = torch.full((1,), 500.0)
    edited = latents.clone()
    edited[:, :, 6:] = torch.randn_like(edited[:, :, 6:])
    with torch.no_grad():
        a = model(latents, t, text, num_frames_per_block=3)
        b = model(edited, t, text, num_frames_per_block=3)
        bidirectional = model(edited, t, text)
    assert torch.equal(a[:, :, :6], b[:, :, :6])
    assert not torch.allclose(a[:, :, 6:], b[:, :, 6:])
    assert not torch.allclose(a[:, :, :6], bidirectional[:, :, :6])


def test_block_mask_rule_against_hand_written_mask():
    mask = BlockMask(torch.tensor([0, 0, 1]), torch.tensor([-1, 0, 0, 1]))
    expected = torch.tensor([[True, True, True, False], [True, True, True, False], [True, True, True, True]])
    assert torch.equal(mask.dense(), expected)
    q, k, v = torch.randn(1, 3, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)
    out = sdpa_attention(q, k, v, mask)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 8 ** 0.5
    probs = scores.masked_fill(~expected, float("-inf")).softmax(-1)
    assert (out - torch.einsum("bhqk,bkhd->bqhd", probs, v)).abs().max() <= 1e-6


@pytest.mark.filterwarnings("ignore:.*flex_attention.*")
def test_flex_backend_equals_sdpa_on_the_block_causal_model():
    cfg, sdpa_model = tiny()
    flex_cfg, flex_model = tiny(["model.attention_backend=flex"])
    flex_model.load_state_dict(sdpa_model.state_dict())
    latents = torch.randn(1, cfg.model.in_channels, 6, 8, 8)
    text = torch.randn(1, cfg.text.max_length, cfg.model.text_dim)
    t = torch.rand(1, 6) * 1000
    with torch.no_grad():
        for block in (None, 3):
            expected = sdpa_model(latents, t, text, num_frames_per_block=block)
            assert (flex_model(latents, t, text, num_frames_per_block=block) - expected).abs().max() <= 1e-5


def test_flash_backend_refuses_cleanly_without_cuda(monkeypatch):
    from ctxf.models.attention import get_attention_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        get_attention_backend("flash")
