"""ctxf-convert on checkpoints written by real 2-rank ZeRO-3 training runs (stage 0 of the tiny
model, one plain run with EMA and one LoRA run, trained with `build_trainer` on gloo workers).

Oracles: DeepSpeed's own `get_fp32_state_dict_from_zero_checkpoint` for the consolidation, the
EMA file the trainer wrote, and the LoRA-adapted teacher (adapters unmerged, loaded from
DeepSpeed's consolidation) for merge-lora.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from gloo_workers import run_workers
from safetensors.torch import load_file

from ctxf.ckpt.convert_cli import main
from ctxf.config import ModelConfig
from ctxf.models.lora import add_lora
from ctxf.models.wan import WanDiT

STEP = "checkpoints/step_00000002"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def train_runs(root: str, runs: dict[str, list[str]]) -> list[int]:
    """Each run in turn on these ranks: stage 0 of the tiny model, 2 steps, a checkpoint at step 2."""
    import torch.distributed as dist

    from ctxf.config import load_config
    from ctxf.parallel.plan import plan
    from ctxf.preflight import preflight
    from ctxf.train import build_trainer

    steps = []
    for name, overrides in runs.items():
        config = load_config("tiny", [f"train.output_dir={root}/{name}", "train.num_steps=2", "train.checkpoint_every=2",
                                      "train.sample_every=0", "parallel.ds_config=ds_configs/zero3.json", *overrides])
        preflight(config, "never", dist.get_world_size())
        trainer = build_trainer(config, plan(dist.get_world_size(), config), dist.get_rank())
        steps.append(trainer.run(None).step)
    return steps


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("convert-runs")
    overrides = {"plain": ["train.ema_decay=0.9"], "lora": ["lora.rank=4", "lora.alpha=8"]}
    assert run_workers(2, train_runs, str(root), overrides, timeout=240) == [[2, 2], [2, 2]]
    return {name: root / name for name in overrides}


def _deepspeed_consolidation(step_dir: Path, role: str = "teacher") -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()):
        return dict(get_fp32_state_dict_from_zero_checkpoint(str(step_dir / role), tag="zero"))


def _read_output(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def _assert_identical(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected) or sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and torch.equal(actual[key], tensor), key


def _refused(capsys, argv: list[str], *fragments: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def _nothing_written(dst: Path) -> None:
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]


# ----------------------------------------------------------------------------- acceptance 2

@pytest.mark.parametrize("run", ["plain", "lora"])
def test_zero_to_safetensors_equals_deepspeeds_consolidation(runs, tmp_path, run):
    expected = _deepspeed_consolidation(runs[run] / STEP)
    if run == "lora":
        assert any(k.endswith("lora_A") for k in expected) and any(k.endswith(".weight") for k in expected)

    assert main(["zero-to-safetensors", str(runs[run]), str(tmp_path / "one")]) == 0
    _assert_identical(_read_output(tmp_path / "one"), expected)

    assert main(["zero-to-safetensors", str(runs[run] / STEP), str(tmp_path / "sharded"),
                 "--max-shard-size", "40KB"]) == 0
    index = json.loads((tmp_path / "sharded" / f"{WEIGHTS}.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and set(index["weight_map"]) == set(expected)
    _assert_identical(_read_output(tmp_path / "sharded"), expected)

    # a DeepSpeed checkpoint directory given directly (its `latest` names the tag), in bf16
    assert main(["zero-to-safetensors", str(runs[run] / STEP / "teacher"), str(tmp_path / "bf16.safetensors"),
                 "--dtype", "bf16"]) == 0
    _assert_identical(_read_output(tmp_path / "bf16.safetensors"),
                      {k: v.to(torch.bfloat16) for k, v in expected.items()})


def test_consolidated_plain_run_is_a_diffusers_directory(runs, tmp_path):
    assert main(["zero-to-safetensors", str(runs["plain"]), str(tmp_path / "out")]) == 0
    loaded = WanTransformer3DModel.from_pretrained(tmp_path / "out")
    _assert_identical(loaded.state_dict(), _deepspeed_consolidation(runs["plain"] / STEP))


def test_to_diffusers_chooses_the_role_and_its_ema(runs, tmp_path):
    step = runs["plain"] / STEP
    assert main(["to-diffusers", str(runs["plain"]), str(tmp_path / "ema"), "--role", "teacher", "--ema"]) == 0
    _assert_identical(_read_output(tmp_path / "ema"), load_file(step / "teacher_ema.safetensors"))
    assert main(["to-diffusers", str(step), str(tmp_path / "live"), "--role", "teacher"]) == 0
    _assert_identical(_read_output(tmp_path / "live"), _deepspeed_consolidation(step))


# ----------------------------------------------------------------------------- acceptance 3

def test_merge_lora_then_to_diffusers_matches_the_adapted_teacher(runs, tmp_path):
    step = runs["lora"] / STEP
    manifest = json.loads((step / "manifest.json").read_text())
    cfg = ModelConfig(**manifest["config"]["model"])
    lora = manifest["roles"]["teacher"]["lora"]
    adapted = WanDiT(cfg)
    add_lora(adapted, lora["targets"], lora["rank"], lora["alpha"])
    adapted.load_state_dict(_deepspeed_consolidation(step), strict=True)
    assert any(adapted.get_parameter(k).abs().max() > 0 for k, _ in adapted.named_parameters() if k.endswith("lora_B"))

    assert main(["merge-lora", str(step), str(tmp_path / "merged"), "--role", "teacher"]) == 0
    assert main(["to-diffusers", str(tmp_path / "merged"), str(tmp_path / "final")]) == 0
    merged = WanDiT(cfg).eval()
    merged.load_state_dict(_read_output(tmp_path / "final"), strict=True)
    _assert_identical(WanTransformer3DModel.from_pretrained(tmp_path / "final").state_dict(), merged.state_dict())

    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(1, cfg.in_channels, 3, 8, 8, generator=gen)
    text = torch.randn(1, 16, cfg.text_dim, generator=gen)
    with torch.no_grad():
        want = adapted.eval()(latents, torch.tensor([700.0]), text)
        assert (merged(latents, torch.tensor([700.0]), text) - want).abs().max().item() <= 1e-6


# ----------------------------------------------------------------------------- acceptance 4

def _deepspeed_copy(runs, tmp_path) -> Path:
    copy = tmp_path / "teacher"
    shutil.copytree(runs["plain"] / STEP / "teacher", copy)
    return copy / "zero"


def test_missing_zero_shard_is_refused(runs, tmp_path, capsys):
    zero = _deepspeed_copy(runs, tmp_path)
    shard = zero / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.unlink()
    dst = tmp_path / "out"
    _refused(capsys, ["zero-to-safetensors", str(zero.parent), str(dst)], str(shard), "missing")
    _nothing_written(dst)

    step = tmp_path / "step"  # the same inside a training step: its manifest names the file
    shutil.copytree(runs["plain"] / STEP, step)
    (step / "teacher" / "zero" / shard.name).unlink()
    _refused(capsys, ["zero-to-safetensors", str(step), str(dst)], shard.name, "missing")
    _nothing_written(dst)


def test_truncated_zero_shard_is_refused(runs, tmp_path, capsys):
    zero = _deepspeed_copy(runs, tmp_path)
    shard = zero / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:4000])
    dst = tmp_path / "out.safetensors"
    _refused(capsys, ["zero-to-safetensors", str(zero), str(dst)], str(shard), "truncated")
    _nothing_written(dst)


def test_zero_shard_holding_an_arbitrary_object_is_refused(runs, tmp_path, capsys):
    import argparse

    zero = _deepspeed_copy(runs, tmp_path)
    shard = zero / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    state = torch.load(zero / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=True)
    torch.save({**state, "hook": argparse.Namespace(run="anything")}, shard)
    dst = tmp_path / "out"
    _refused(capsys, ["zero-to-safetensors", str(zero), str(dst)], str(shard), "not loaded for safety")
    _nothing_written(dst)


def test_lora_for_another_geometry_is_refused(runs, tmp_path, capsys):
    other = WanTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=12, out_channels=12,
                                  text_dim=32, freq_dim=32, ffn_dim=48, num_layers=2, patch_size=(1, 2, 2))
    other.save_pretrained(tmp_path / "base")
    adapter = runs["lora"] / STEP / "teacher_lora.safetensors"
    dst = tmp_path / "merged"
    _refused(capsys, ["merge-lora", str(runs["lora"]), str(dst), "--base", str(tmp_path / "base")],
             str(adapter), "another geometry")
    _nothing_written(dst)


def test_inspect_training_step(runs, capsys):
    assert main(["inspect", str(runs["lora"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = _deepspeed_consolidation(runs["lora"] / STEP)
    teacher = report["roles"]["teacher"]
    assert (report["format"], report["step"], report["world_size"]) == ("ctxf training step", 2, 2)
    assert teacher["num_parameters"] == sum(t.numel() for t in expected.values())
    assert teacher["lora_config"]["rank"] == 4 and teacher["lora"]["ranks"] == [4]
    assert teacher["geometry"]["num_layers"] == 2 and teacher["geometry"]["num_heads"] == 2


def test_inspect_deepspeed_checkpoint_and_adapter(runs, capsys):
    step = runs["lora"] / STEP
    assert main(["inspect", str(step / "teacher"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = _deepspeed_consolidation(step)
    assert (report["format"], report["world_size"]) == ("DeepSpeed ZeRO-3 checkpoint", 2)
    assert report["num_parameters"] == sum(t.numel() for t in expected.values())

    adapter = load_file(step / "teacher_lora.safetensors")
    assert main(["inspect", str(step / "teacher_lora.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "LoRA adapter" and report["lora"]["ranks"] == [4]
    assert report["num_parameters"] == sum(t.numel() for t in adapter.values())
    assert report["adapter_config"]["alpha"] == 8
