"""ctxf-convert on weights diffusers itself created (one process; the ZeRO-3 side is
tests/distributed/test_convert_zero.py).

Oracles: diffusers' `save_pretrained` / `from_pretrained` and forward, diffusers' own Wan converter
(`convert_wan_transformer_to_diffusers`) for Wan's original names, the hand-written list of Wan's
`WanModel` parameter names in test_weights.py, and the safetensors library reading what we write.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import load_file, save_file
from test_weights import WAN_ONE_BLOCK_KEYS

from ctxf.ckpt.convert_cli import main
from ctxf.config import ModelConfig
from ctxf.models.lora import add_lora, split_adapter
from ctxf.models.wan import WanDiT

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_dim=24, freq_dim=32,
            ffn_dim=48, patch_size=(1, 2, 2))
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _diffusers_model(num_layers: int = 2, seed: int = 0, **overrides) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**TINY, "num_layers": num_layers, **overrides})
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def _forward(model: WanTransformer3DModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    latents, text = torch.randn(2, 4, 3, 4, 6, generator=gen), torch.randn(2, 5, 24, generator=gen)
    with torch.no_grad():
        return model(latents.to(model.dtype), torch.tensor([900.0, 300.0]), text.to(model.dtype),
                     return_dict=False)[0].float()


def _assert_identical(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and torch.equal(actual[key], tensor), key


def _refused(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI, expect exit status 2 and one error line naming every fragment, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def _nothing_written(dst) -> None:
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]


# ----------------------------------------------------------------------------- acceptance 1: round trips

@pytest.mark.parametrize("dtype, shard", [(torch.float32, None), (torch.bfloat16, "20KB")], ids=["fp32", "bf16-sharded"])
def test_diffusers_round_trip_is_bit_identical(tmp_path, dtype, shard):
    original = _diffusers_model().to(dtype)
    original.save_pretrained(tmp_path / "src", max_shard_size=shard or "10GB")
    assert main(["to-diffusers", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    stored = {}
    for file in (tmp_path / "src").glob("*.safetensors"):
        stored.update(load_file(file))
    _assert_identical(load_file(tmp_path / "dst" / WEIGHTS), stored)  # diffusers' bytes, not recast
    _assert_identical(WanTransformer3DModel.from_pretrained(tmp_path / "dst", torch_dtype=dtype).state_dict(),
                      WanTransformer3DModel.from_pretrained(tmp_path / "src", torch_dtype=dtype).state_dict())
    src_config = json.loads((tmp_path / "src" / "config.json").read_text())
    dst_config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert {k: v for k, v in dst_config.items() if k in src_config and not k.startswith("_")} == \
        {k: v for k, v in src_config.items() if k in dst_config and not k.startswith("_")}


def _wan_original_file(tmp_path, model: WanTransformer3DModel):
    """Wan's own names for `model`'s tensors, from diffusers' converter (not from our key table)."""
    blocks = {k for k in WAN_ONE_BLOCK_KEYS if k.startswith("blocks.0.")}
    wan_keys = (WAN_ONE_BLOCK_KEYS - blocks) | {k.replace("blocks.0.", f"blocks.{i}.") for k in blocks for i in range(2)}
    diffusers_name = convert_wan_transformer_to_diffusers({key: key for key in wan_keys})
    original = {wan: model.state_dict()[ours].clone() for ours, wan in diffusers_name.items()}
    save_file(original, tmp_path / "wan.safetensors")
    return tmp_path / "wan.safetensors", original, wan_keys


def test_wan_original_to_diffusers_computes_what_the_original_does(tmp_path):
    model = _diffusers_model(seed=3)
    wan_file, original, _ = _wan_original_file(tmp_path, model)
    directly = WanTransformer3DModel(**{**TINY, "num_layers": 2}).eval()
    directly.load_state_dict(convert_wan_transformer_to_diffusers(dict(original)), strict=True)

    assert main(["to-diffusers", str(wan_file), str(tmp_path / "dst"), "--head-dim", "16"]) == 0
    converted = WanTransformer3DModel.from_pretrained(tmp_path / "dst").eval()
    assert (_forward(converted) - _forward(directly)).abs().max().item() <= 1e-5


def test_to_wan_gives_exactly_wans_key_layout(tmp_path):
    model = _diffusers_model(seed=4)
    model.save_pretrained(tmp_path / "src")
    _, _, wan_keys = _wan_original_file(tmp_path, model)
    assert main(["to-wan", str(tmp_path / "src"), str(tmp_path / "out.safetensors")]) == 0
    exported = load_file(tmp_path / "out.safetensors")
    assert set(exported) == wan_keys  # strict: nothing missing, nothing extra
    _assert_identical(convert_wan_transformer_to_diffusers(dict(exported)), model.state_dict())

    assert main(["to-wan", str(tmp_path / "src"), str(tmp_path / "wan_dir"), "--max-shard-size", "20KB"]) == 0
    config = json.loads((tmp_path / "wan_dir" / "config.json").read_text())
    assert (config["_class_name"], config["dim"], config["num_heads"], config["num_layers"]) == ("WanModel", 32, 2, 2)
    index = json.loads((tmp_path / "wan_dir" / f"{WEIGHTS}.index.json").read_text())
    shards = {}
    for name in set(index["weight_map"].values()):
        shards.update(load_file(tmp_path / "wan_dir" / name))
    _assert_identical(shards, exported)


def test_dtype_option_casts_floating_tensors(tmp_path):
    model = _diffusers_model()
    model.save_pretrained(tmp_path / "src")
    assert main(["to-diffusers", str(tmp_path / "src"), str(tmp_path / "dst"), "--dtype", "bf16"]) == 0
    stored = load_file(tmp_path / "dst" / WEIGHTS)
    _assert_identical(stored, {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})


# ----------------------------------------------------------------------------- inspect

def test_inspect_reports_format_size_and_geometry(tmp_path, capsys):
    model = _diffusers_model(num_layers=3)
    model.save_pretrained(tmp_path / "pipe" / "transformer")
    assert main(["inspect", str(tmp_path / "pipe"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"].startswith("diffusers") and "pipeline" in report["format"]
    assert report["num_parameters"] == model.num_parameters()
    assert report["dtypes"] == {"float32": len(model.state_dict())}
    geometry = report["geometry"]
    assert (geometry["num_layers"], geometry["dim"], geometry["ffn_dim"], geometry["num_heads"]) == (3, 32, 48, 2)
    assert "blocks.{0-2}.attn1.to_q.weight [32, 32] float32" in report["keys"]

    wan_file, _, _ = _wan_original_file(tmp_path, _diffusers_model())
    assert main(["inspect", str(wan_file)]) == 0
    text = capsys.readouterr().out
    assert "format: Wan original" in text and "blocks.{0-1}.self_attn.q.weight [32, 32] float32" in text


def test_inspect_names_a_known_wan_size_from_headers_alone(tmp_path, capsys):
    """A 30-block, 1536-wide file whose tensors were never written: only the header is read."""
    shapes = {"patch_embedding.weight": [1536, 16, 1, 2, 2], "head.head.weight": [64, 1536]}
    shapes.update({f"blocks.{i}.self_attn.q.weight": [1536, 1536] for i in range(30)})
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header).encode()
    with open(tmp_path / "wan.safetensors", "wb") as handle:  # sparse: the data is never written
        handle.write(len(encoded).to_bytes(8, "little") + encoded)
        handle.truncate(8 + len(encoded) + offset)
    assert main(["inspect", str(tmp_path / "wan.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["known_model"].startswith("Wan2.1-T2V-1.3B")
    assert report["num_parameters"] == 1536 * 16 * 4 + 64 * 1536 + 30 * 1536 * 1536


# ----------------------------------------------------------------------------- LoRA

def _adapter_files(tmp_path, cfg: ModelConfig, name: str = "teacher_lora"):
    model = WanDiT(cfg)
    add_lora(model, ["to_q", "ffn"], rank=2, alpha=4.0)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("lora_B"):
                param.normal_()
    _, adapter = split_adapter(model.state_dict())
    save_file({k: v.contiguous() for k, v in adapter.items()}, tmp_path / f"{name}.safetensors")
    (tmp_path / f"{name}.json").write_text(json.dumps({"rank": 2, "alpha": 4.0, "targets": ["to_q", "ffn"]}))
    return model, tmp_path / f"{name}.safetensors"


def test_merge_lora_file_matches_the_adapted_model(tmp_path):
    cfg = ModelConfig(num_heads=2, head_dim=16, num_layers=2, ffn_dim=48, freq_dim=32, text_dim=24, in_channels=4,
                      out_channels=4)
    adapted, adapter = _adapter_files(tmp_path, cfg)
    base, _ = split_adapter(adapted.state_dict())
    save_file({k: v.contiguous() for k, v in base.items()}, tmp_path / "base.safetensors")
    dst = tmp_path / "merged"
    assert main(["merge-lora", str(dst), "--adapter", str(adapter), "--base", str(tmp_path / "base.safetensors"),
                 "--head-dim", "16"]) == 0
    merged = WanDiT(cfg).eval()
    merged.load_state_dict(load_file(dst / WEIGHTS), strict=True)
    gen = torch.Generator().manual_seed(1)
    latents, text = torch.randn(1, 4, 3, 4, 4, generator=gen), torch.randn(1, 5, 24, generator=gen)
    with torch.no_grad():
        want = adapted.eval()(latents, torch.tensor([500.0]), text)
        assert (merged(latents, torch.tensor([500.0]), text) - want).abs().max().item() <= 1e-6
    WanTransformer3DModel.from_pretrained(dst)  # a diffusers directory


# ----------------------------------------------------------------------------- acceptance 4: refusals

def test_truncated_safetensors_is_refused(tmp_path, capsys):
    _diffusers_model().save_pretrained(tmp_path / "src")
    weights = tmp_path / "src" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:5000])
    dst = tmp_path / "dst"
    _refused(capsys, ["to-diffusers", str(tmp_path / "src"), str(dst)], str(weights), "truncated")
    _nothing_written(dst)


def test_pickle_with_an_arbitrary_object_is_refused(tmp_path, capsys):
    state = {k: v for k, v in _diffusers_model().state_dict().items()}
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1)}, tmp_path / "model.pt")
    dst = tmp_path / "dst"
    _refused(capsys, ["to-diffusers", str(tmp_path / "model.pt"), str(dst)], str(tmp_path / "model.pt"),
             "refused because unpickling them can run arbitrary code", "argparse.Namespace")
    _nothing_written(dst)


def test_lora_for_another_geometry_is_refused(tmp_path, capsys):
    _, adapter = _adapter_files(tmp_path, ModelConfig(num_heads=2, head_dim=16, num_layers=2, ffn_dim=64,
                                                      text_dim=24, in_channels=4, out_channels=4))
    _diffusers_model().save_pretrained(tmp_path / "base")  # ffn_dim 48
    dst = tmp_path / "merged"
    _refused(capsys, ["merge-lora", str(dst), "--adapter", str(adapter), "--base", str(tmp_path / "base")],
             str(adapter), "another geometry")
    _nothing_written(dst)


def test_missing_and_unknown_keys_are_refused(tmp_path, capsys):
    state = _diffusers_model().state_dict()
    state.pop("blocks.1.attn2.to_k.weight")
    state["blocks.1.attn2.add_k_proj.weight"] = torch.zeros(32, 32)
    save_file(state, tmp_path / "odd.safetensors")
    dst = tmp_path / "dst"
    _refused(capsys, ["to-diffusers", str(tmp_path / "odd.safetensors"), str(dst), "--head-dim", "16"],
             str(tmp_path / "odd.safetensors"), "blocks.1.attn2.to_k.weight", "blocks.1.attn2.add_k_proj.weight")
    _nothing_written(dst)


def test_existing_destination_is_kept_unless_overwrite(tmp_path, capsys):
    _diffusers_model(seed=1).save_pretrained(tmp_path / "src")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "mine.txt").write_text("keep me")
    _refused(capsys, ["to-diffusers", str(tmp_path / "src"), str(dst)], str(dst), "--overwrite")
    assert (dst / "mine.txt").read_text() == "keep me"
    assert main(["to-diffusers", str(tmp_path / "src"), str(dst), "--overwrite"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", WEIGHTS]


def test_module_entry_point_and_help(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "ctxf.ckpt", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("inspect", "to-diffusers", "to-wan", "zero-to-safetensors", "merge-lora"):
        assert command in result.stdout


def test_inputs_that_are_not_what_they_claim_are_refused(tmp_path, capsys):
    model = _diffusers_model()
    model.save_pretrained(tmp_path / "diffusers")
    weights = tmp_path / "diffusers" / WEIGHTS
    (tmp_path / "diffusers.json").write_text(json.dumps({"rank": 2, "alpha": 2}))
    _refused(capsys, ["merge-lora", str(tmp_path / "m"), "--adapter", str(weights), "--base", str(weights)],
             str(weights), "is not a LoRA adapter")
    _refused(capsys, ["zero-to-safetensors", str(tmp_path / "diffusers"), str(tmp_path / "z")],
             str(tmp_path / "diffusers"), "no DeepSpeed ZeRO shard files")
    _refused(capsys, ["to-diffusers", str(tmp_path / "diffusers"), str(tmp_path / "d"), "--role", "student"],
             str(tmp_path / "diffusers"), "not a training step")
    (tmp_path / "notes.safetensors").write_bytes(b"this is text, not tensors")
    _refused(capsys, ["inspect", str(tmp_path / "notes.safetensors")], str(tmp_path / "notes.safetensors"),
             "not a readable safetensors file")
    for name in ("m", "z", "d"):
        _nothing_written(tmp_path / name)
