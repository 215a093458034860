"""Checkpoint formats in and out (ctxf.ckpt, and loading through ctxf.models.weights).

Oracles: diffusers' own Wan converter (`convert_wan_transformer_to_diffusers`), its
`save_pretrained` / `from_pretrained` for the directory layout and sharding, a hand-written list
of the original `WanModel` key names (read from Wan's model code, independent of both), and
diffusers' forward for what the weights compute.
"""

import dataclasses
import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from ctxf.config import ConfigError, ModelConfig, load_config
from ctxf.models.wan import WanDiT
from ctxf.ckpt.checkpoint_config import check_model_config, model_config_from_diffusers
from ctxf.ckpt.checkpoint_files import (
    load_diffusers_dir, load_wan_original, read_checkpoint, save_diffusers_dir, save_wan_original,
)
from ctxf.ckpt.wan_keys import CheckpointError, diffusers_to_wan, wan_to_diffusers
from ctxf.models.weights import build_model_from_pretrained, load_model_weights

DIFFUSERS_TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=24,
                      freq_dim=32, ffn_dim=48, patch_size=(1, 2, 2))

# Every parameter of a one-block text-to-video `WanModel`, named as Wan's own code names them.
WAN_ONE_BLOCK_KEYS = {
    "patch_embedding.weight", "patch_embedding.bias",
    "text_embedding.0.weight", "text_embedding.0.bias", "text_embedding.2.weight", "text_embedding.2.bias",
    "time_embedding.0.weight", "time_embedding.0.bias", "time_embedding.2.weight", "time_embedding.2.bias",
    "time_projection.1.weight", "time_projection.1.bias",
    "blocks.0.self_attn.q.weight", "blocks.0.self_attn.q.bias", "blocks.0.self_attn.k.weight",
    "blocks.0.self_attn.k.bias", "blocks.0.self_attn.v.weight", "blocks.0.self_attn.v.bias",
    "blocks.0.self_attn.o.weight", "blocks.0.self_attn.o.bias",
    "blocks.0.self_attn.norm_q.weight", "blocks.0.self_attn.norm_k.weight",
    "blocks.0.cross_attn.q.weight", "blocks.0.cross_attn.q.bias", "blocks.0.cross_attn.k.weight",
    "blocks.0.cross_attn.k.bias", "blocks.0.cross_attn.v.weight", "blocks.0.cross_attn.v.bias",
    "blocks.0.cross_attn.o.weight", "blocks.0.cross_attn.o.bias",
    "blocks.0.cross_attn.norm_q.weight", "blocks.0.cross_attn.norm_k.weight",
    "blocks.0.norm3.weight", "blocks.0.norm3.bias",
    "blocks.0.ffn.0.weight", "blocks.0.ffn.0.bias", "blocks.0.ffn.2.weight", "blocks.0.ffn.2.bias",
    "blocks.0.modulation",
    "head.head.weight", "head.head.bias", "head.modulation",
}

# Wan2.1-T2V-1.3B as published: diffusers' config.json and the original WanModel config.json.
WAN_1_3B_DIFFUSERS_CONFIG = {
    "_class_name": "WanTransformer3DModel", "added_kv_proj_dim": None, "attention_head_dim": 128,
    "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "image_dim": None, "in_channels": 16,
    "num_attention_heads": 12, "num_layers": 30, "out_channels": 16, "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096,
}
WAN_1_3B_ORIGINAL_CONFIG = {
    "_class_name": "WanModel", "dim": 1536, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16,
    "model_type": "t2v", "num_heads": 12, "num_layers": 30, "out_dim": 16, "text_len": 512,
}


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def _diffusers_model(num_layers: int, seed: int = 0, **overrides) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return _perturbed(WanTransformer3DModel(**{**DIFFUSERS_TINY, "num_layers": num_layers, **overrides}), seed)


def _our_config(num_layers: int, **overrides) -> ModelConfig:
    fields = dict(num_heads=2, head_dim=16, ffn_dim=48, freq_dim=32, text_dim=24, in_channels=4, out_channels=4)
    return ModelConfig(num_layers=num_layers, **{**fields, **overrides})


def _our_model(num_layers: int, seed: int = 0, **overrides) -> WanDiT:
    torch.manual_seed(seed)
    return _perturbed(WanDiT(_our_config(num_layers, **overrides)), seed)


def _forward_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(2, 4, 3, 4, 6, generator=gen), torch.tensor([900.0, 300.0]), torch.randn(2, 5, 24, generator=gen)


def _assert_same_tensors(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def _wan_keys(num_layers: int) -> set[str]:
    blocks = {k for k in WAN_ONE_BLOCK_KEYS if k.startswith("blocks.0.")}
    return (WAN_ONE_BLOCK_KEYS - blocks) | {k.replace("blocks.0.", f"blocks.{i}.") for k in blocks
                                             for i in range(num_layers)}


# ----------------------------------------------------------------------------- key map

def test_key_map_inverts_diffusers_converter():
    state = _diffusers_model(num_layers=2).state_dict()
    wan = diffusers_to_wan(state)
    assert set(wan) == _wan_keys(2)
    _assert_same_tensors(convert_wan_transformer_to_diffusers(dict(wan)), state)
    _assert_same_tensors(wan_to_diffusers(wan), state)


def test_independent_wan_checkpoint_gives_diffusers_forward(tmp_path):
    """A Wan-named checkpoint built from the hand-written key list, converted for diffusers by its
    own converter, computes the same as the same file loaded by ctxf."""
    reference = _diffusers_model(num_layers=1)
    shapes = reference.state_dict()
    diffusers_name = convert_wan_transformer_to_diffusers({key: key for key in WAN_ONE_BLOCK_KEYS})
    wan_name = {ours: wan for ours, wan in diffusers_name.items()}
    assert set(wan_name) == set(shapes)
    torch.manual_seed(11)
    original = {wan_name[k]: torch.randn(shape.shape) * 0.3 for k, shape in shapes.items()}
    torch.save(original, tmp_path / "wan.pth")

    reference.load_state_dict(convert_wan_transformer_to_diffusers(dict(original)), strict=True)
    ours = WanDiT(_our_config(1)).eval()
    load_model_weights(ours, tmp_path / "wan.pth")
    latents, timestep, text = _forward_inputs()
    with torch.no_grad():
        expected = reference(latents, timestep, text, return_dict=False)[0]
        assert (ours(latents, timestep, text) - expected).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------- Wan original format

@pytest.mark.parametrize("layout", ["model.safetensors", "model.pth", "model.pt", "directory", "sharded"])
def test_wan_original_round_trip(tmp_path, layout):
    model = _our_model(num_layers=2)
    path = tmp_path / ("wan" if layout in ("directory", "sharded") else layout)
    save_wan_original(model, path, max_shard_size="20KB" if layout == "sharded" else None)
    if layout == "sharded":
        assert (path / "diffusion_pytorch_model.safetensors.index.json").is_file()
        assert len(list(path.glob("diffusion_pytorch_model-*.safetensors"))) > 1

    assert set(load_wan_original(path)) == _wan_keys(2)
    loaded = WanDiT(model.cfg)
    load_model_weights(loaded, path)
    _assert_same_tensors(loaded.state_dict(), model.state_dict())

    rebuilt = build_model_from_pretrained(path, base=ModelConfig(head_dim=16))
    assert rebuilt.cfg == model.cfg
    _assert_same_tensors(rebuilt.state_dict(), model.state_dict())


def test_geometry_is_read_off_weights_without_config(tmp_path):
    model = _our_model(num_layers=2, out_channels=3, patch_size=[1, 2, 1], cross_attn_norm=False, ffn_dim=40)
    save_wan_original(model, tmp_path / "wan.pth")
    rebuilt = build_model_from_pretrained(tmp_path / "wan.pth", base=ModelConfig(head_dim=8))
    assert rebuilt.cfg == dataclasses.replace(model.cfg, num_heads=4, head_dim=8)
    _assert_same_tensors(rebuilt.state_dict(), model.state_dict())


def test_bfloat16_checkpoint_loads_into_float32_model(tmp_path):
    model = _our_model(num_layers=1).to(torch.bfloat16)
    save_wan_original(model, tmp_path / "wan.safetensors")
    loaded = WanDiT(model.cfg)
    load_model_weights(loaded, tmp_path / "wan.safetensors")
    _assert_same_tensors(loaded.state_dict(), {k: v.float() for k, v in model.state_dict().items()})


def test_wan_directory_config_is_checked(tmp_path):
    save_wan_original(_our_model(num_layers=2), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["_class_name"], config["dim"], config["num_heads"], config["num_layers"]) == ("WanModel", 32, 2, 2)
    with pytest.raises(ConfigError, match=r"model\.num_layers=2"):
        load_model_weights(WanDiT(_our_config(3)), tmp_path)


def test_nested_and_prefixed_torch_checkpoint(tmp_path):
    """A trainer checkpoint: several entries, keys prefixed by a wrapper module (`model.`)."""
    model = _our_model(num_layers=1)
    wan = {f"model.{k}": v for k, v in diffusers_to_wan(model.state_dict()).items()}
    torch.save({"generator": wan, "critic": dict(wan), "step": 3}, tmp_path / "train.pt")
    with pytest.raises(CheckpointError, match=r"generator.*critic"):
        read_checkpoint(tmp_path / "train.pt")
    loaded = WanDiT(model.cfg)
    load_model_weights(loaded, tmp_path / "train.pt", state_dict_key="generator")
    _assert_same_tensors(loaded.state_dict(), model.state_dict())


# ----------------------------------------------------------------------------- diffusers format

def test_sharded_diffusers_dir_and_pipeline_parent(tmp_path):
    reference = _diffusers_model(num_layers=3)
    reference.save_pretrained(tmp_path / "pipeline" / "transformer", max_shard_size="20KB")
    transformer_dir = tmp_path / "pipeline" / "transformer"
    assert (transformer_dir / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(transformer_dir.glob("*.safetensors"))) > 1

    for path in (transformer_dir, tmp_path / "pipeline"):
        _assert_same_tensors(load_diffusers_dir(path), reference.state_dict())
        ours = build_model_from_pretrained(path)
        _assert_same_tensors(ours.state_dict(), reference.state_dict())


@pytest.mark.parametrize("max_shard_size", [None, "20KB"])
def test_save_diffusers_dir_loads_in_diffusers(tmp_path, max_shard_size):
    ours = _our_model(num_layers=2)
    save_diffusers_dir(ours, tmp_path, max_shard_size=max_shard_size)
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file() == (max_shard_size is not None)
    reloaded = WanTransformer3DModel.from_pretrained(tmp_path).eval()
    _assert_same_tensors(reloaded.state_dict(), ours.state_dict())
    latents, timestep, text = _forward_inputs()
    with torch.no_grad():
        assert (reloaded(latents, timestep, text, return_dict=False)[0]
                - ours(latents, timestep, text)).abs().max().item() <= 1e-5


def test_resaving_replaces_earlier_shards(tmp_path):
    save_diffusers_dir(_our_model(num_layers=2, seed=1), tmp_path, max_shard_size="20KB")
    ours = _our_model(num_layers=2, seed=2)
    save_diffusers_dir(ours, tmp_path)
    assert [f.name for f in tmp_path.glob("diffusion_pytorch_model*")] == ["diffusion_pytorch_model.safetensors"]
    _assert_same_tensors(load_diffusers_dir(tmp_path), ours.state_dict())


# ----------------------------------------------------------------------------- configs

def test_wan_1_3b_configs_match_the_preset():
    preset = load_config("wan1.3b").model
    check_model_config(preset, WAN_1_3B_DIFFUSERS_CONFIG)
    check_model_config(preset, WAN_1_3B_ORIGINAL_CONFIG)
    converted = model_config_from_diffusers(WAN_1_3B_DIFFUSERS_CONFIG, base=preset)
    assert converted == preset


def test_config_disagreement_lists_every_field():
    with pytest.raises(ConfigError) as err:
        check_model_config(_our_config(2), WAN_1_3B_DIFFUSERS_CONFIG)
    message = str(err.value)
    for fix in ("model.num_heads=12", "model.head_dim=128", "model.num_layers=30", "model.ffn_dim=8960",
                "model.text_dim=4096", "model.in_channels=16"):
        assert fix in message
    assert "model.eps" not in message and "model.patch_size" not in message


def test_image_to_video_config_is_rejected():
    with pytest.raises(CheckpointError, match="image_dim"):
        model_config_from_diffusers({**WAN_1_3B_DIFFUSERS_CONFIG, "image_dim": 1280, "added_kv_proj_dim": 1536})


# ----------------------------------------------------------------------------- mismatched keys

def _wan_file(tmp_path, state: dict) -> str:
    path = tmp_path / "wan.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def test_missing_blocks_are_named(tmp_path):
    path = _wan_file(tmp_path, diffusers_to_wan(_our_model(num_layers=2).state_dict()))
    with pytest.raises(CheckpointError) as err:
        load_model_weights(WanDiT(_our_config(3)), path)
    message = str(err.value)
    assert "missing 27 keys" in message and "blocks.2.* (whole blocks)" in message
    assert "set model.num_layers=2" in message


def test_unexpected_keys_are_named_in_checkpoint_names(tmp_path):
    state = diffusers_to_wan(_our_model(num_layers=3).state_dict())
    state["head.extra_scale"] = torch.ones(3)
    del state["blocks.0.cross_attn.norm_k.weight"]
    with pytest.raises(CheckpointError) as err:
        load_model_weights(WanDiT(_our_config(2)), _wan_file(tmp_path, state))
    message = str(err.value)
    assert "blocks.2.* (whole blocks)" in message and "head.extra_scale" in message
    assert "missing 1 keys" in message and "blocks.0.attn2.norm_k.weight" in message
    assert "set model.num_layers=3" in message


def test_wrong_shapes_name_parameter_and_both_shapes(tmp_path):
    path = _wan_file(tmp_path, diffusers_to_wan(_our_model(num_layers=1, ffn_dim=64).state_dict()))
    with pytest.raises(CheckpointError) as err:
        load_model_weights(WanDiT(_our_config(1)), path)
    message = str(err.value)
    assert "blocks.0.ffn.net.0.proj.weight (Wan: blocks.0.ffn.0.weight): checkpoint [64, 32], model [48, 32]" in message
    assert "set model.ffn_dim=64" in message


def test_hundreds_of_keys_are_folded_and_truncated(tmp_path):
    state = diffusers_to_wan(_our_model(num_layers=1).state_dict())
    state.update({f"extra_{i}.weight": torch.zeros(1) for i in range(300)})
    with pytest.raises(CheckpointError) as err:
        load_model_weights(WanDiT(_our_config(1)), _wan_file(tmp_path, state))
    message = str(err.value)
    assert "unexpected 300 keys" in message and "... and 288 more" in message and len(message) < 2000


def test_image_to_video_checkpoint_is_explained(tmp_path):
    state = diffusers_to_wan(_our_model(num_layers=1).state_dict())
    state["blocks.0.cross_attn.k_img.weight"] = torch.zeros(32, 32)
    with pytest.raises(CheckpointError, match="image-to-video"):
        load_model_weights(WanDiT(_our_config(1)), _wan_file(tmp_path, state))


def test_foreign_and_mixed_checkpoints_are_refused(tmp_path):
    save_file({"encoder.conv.weight": torch.zeros(2)}, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="does not look like a Wan transformer"):
        read_checkpoint(tmp_path / "vae.safetensors")
    state = diffusers_to_wan(_our_model(num_layers=1).state_dict())
    state["blocks.0.attn1.to_q.weight"] = state.pop("blocks.0.self_attn.q.weight")
    with pytest.raises(CheckpointError, match="mixes Wan original"):
        read_checkpoint(_wan_file(tmp_path, state))
