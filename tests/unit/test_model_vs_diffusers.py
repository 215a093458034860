"""Acceptance 2: WanDiT's bidirectional forward equals diffusers' WanTransformer3DModel.

The oracle is diffusers itself: it creates the weights, saves them with `save_pretrained`, and
runs the reference forward from the same directory; ctxf reads that directory through
`ctxf.models.weights`.
"""

import json

import pytest
import torch
from diffusers import WanTransformer3DModel

from ctxf.models.wan import WanDiT
from ctxf.ckpt.checkpoint_config import model_config_from_diffusers
from ctxf.models.weights import build_model_from_pretrained, load_model_weights

TOLERANCE = 1e-5

# Tiny geometries differing in heads, head_dim, layers, channels, patch, frames and H != W, plus
# the variant without the cross-attention norm.
CASES = {
    "2x16_2layers": dict(
        diffusers=dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, in_channels=4, out_channels=4,
                       text_dim=24, freq_dim=32, ffn_dim=48, patch_size=(1, 2, 2)),
        latent_frames=3, latent_height=4, latent_width=6),
    "3x12_3layers": dict(
        diffusers=dict(num_attention_heads=3, attention_head_dim=12, num_layers=3, in_channels=6, out_channels=5,
                       text_dim=20, freq_dim=16, ffn_dim=40, patch_size=(1, 2, 1)),
        latent_frames=5, latent_height=6, latent_width=3),
    "no_cross_attn_norm": dict(
        diffusers=dict(num_attention_heads=2, attention_head_dim=8, num_layers=1, in_channels=4, out_channels=4,
                       text_dim=16, freq_dim=16, ffn_dim=24, patch_size=(1, 2, 2), cross_attn_norm=False),
        latent_frames=2, latent_height=2, latent_width=4),
}


def _diffusers_checkpoint(directory, diffusers_kwargs: dict, seed: int) -> None:
    """A WanTransformer3DModel with every parameter perturbed (so no norm weight stays exactly 1 and
    no bias 0, and a swapped mapping would show), saved by diffusers."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**diffusers_kwargs)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(directory)


def _inputs(case: dict, text_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    channels = case["diffusers"]["in_channels"]
    latents = torch.randn(2, channels, case["latent_frames"], case["latent_height"], case["latent_width"],
                          generator=gen)
    text = torch.randn(2, 7, text_dim, generator=gen)
    return latents, text


def _load_pair(tmp_path, case: dict) -> tuple[WanTransformer3DModel, WanDiT]:
    _diffusers_checkpoint(tmp_path, case["diffusers"], seed=0)
    reference = WanTransformer3DModel.from_pretrained(tmp_path).eval()
    ours = WanDiT(model_config_from_diffusers(json.loads((tmp_path / "config.json").read_text())))
    load_model_weights(ours, tmp_path)
    return reference, ours.eval()


@pytest.mark.parametrize("name", list(CASES))
def test_bidirectional_forward_matches_diffusers(tmp_path, name):
    case = CASES[name]
    reference, ours = _load_pair(tmp_path, case)
    latents, text = _inputs(case, case["diffusers"]["text_dim"], seed=1)
    timestep = torch.tensor([937.5, 250.0])
    with torch.no_grad():
        expected = reference(latents, timestep, text, return_dict=False)[0]
        actual = ours(latents, timestep, text)
    assert actual.shape == expected.shape == (2, case["diffusers"]["out_channels"], *latents.shape[2:])
    assert expected.abs().max() > 0.1  # a real signal, not a near-zero output that any model would match
    assert (actual - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("name", list(CASES))
def test_per_frame_timestep_matches_diffusers_per_token(tmp_path, name):
    """ctxf's per-frame timestep [B, F] equals diffusers' per-token timestep [B, F * tokens_per_frame]."""
    case = CASES[name]
    reference, ours = _load_pair(tmp_path, case)
    latents, text = _inputs(case, case["diffusers"]["text_dim"], seed=2)
    _, patch_h, patch_w = case["diffusers"]["patch_size"]
    tokens_per_frame = (case["latent_height"] // patch_h) * (case["latent_width"] // patch_w)
    per_frame = torch.rand(2, case["latent_frames"], generator=torch.Generator().manual_seed(3)) * 1000
    with torch.no_grad():
        expected = reference(latents, per_frame.repeat_interleave(tokens_per_frame, dim=1), text,
                             return_dict=False)[0]
        actual = ours(latents, per_frame, text)
        same_t_everywhere = ours(latents, per_frame[:, 0], text)
    assert (actual - expected).abs().max().item() <= TOLERANCE
    assert (actual - same_t_everywhere).abs().max().item() > 1e-3  # the per-frame timesteps mattered


def test_build_model_from_pretrained_needs_only_the_directory(tmp_path):
    case = CASES["3x12_3layers"]
    _diffusers_checkpoint(tmp_path, case["diffusers"], seed=4)
    reference = WanTransformer3DModel.from_pretrained(tmp_path).eval()
    ours = build_model_from_pretrained(tmp_path).eval()
    assert (ours.cfg.num_heads, ours.cfg.head_dim, ours.cfg.num_layers) == (3, 12, 3)
    latents, text = _inputs(case, case["diffusers"]["text_dim"], seed=5)
    timestep = torch.tensor([500.0, 10.0])
    with torch.no_grad():
        assert (ours(latents, timestep, text)
                - reference(latents, timestep, text, return_dict=False)[0]).abs().max().item() <= TOLERANCE
