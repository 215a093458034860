"""Bad input to `ctxf/train.py` fails before any process group starts, naming the field and the fix."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from ctxf.ckpt.checkpoint_files import save_diffusers_dir
from ctxf.config import load_config
from ctxf.models.wan import WanDiT
from ctxf.train import main


def _run(capsys, *overrides: str) -> str:
    code = main(list(overrides))
    err = capsys.readouterr().err
    assert code == 2, err
    assert not dist.is_initialized()
    return err


@pytest.fixture
def run_dir(tmp_path):
    return [f"train.output_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", "data.default_clips=8"]


def test_unknown_stage(capsys, run_dir):
    err = _run(capsys, "train.stage=teachr", *run_dir)
    assert "train.stage='teachr'" in err and "did you mean teacher" in err


def test_lora_target_that_names_no_module(capsys, run_dir):
    err = _run(capsys, "lora.rank=4", "lora.targets=[to_q, to_qkv]", *run_dir)
    assert "lora.targets ['to_qkv'] name no linear layer" in err


def test_data_path_without_shards(capsys, run_dir, tmp_path):
    err = _run(capsys, f"data.shards={tmp_path}/none/shard-{{000000..000003}}.tar", *run_dir)
    assert "data.shards" in err and "do not exist" in err


def test_init_checkpoint_of_another_geometry(capsys, run_dir, tmp_path):
    other = load_config("tiny", ["model.num_layers=3"]).model
    save_diffusers_dir(WanDiT(other), tmp_path / "other")
    err = _run(capsys, f"train.init_checkpoint={tmp_path / 'other'}", *run_dir)
    assert "the checkpoint has 3: set model.num_layers=3" in err


def test_resume_from_a_path_that_is_not_a_step(capsys, run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    err = _run(capsys, "--resume", str(tmp_path / "empty"), *run_dir)
    assert str(tmp_path / "empty") in err and "not a training step directory" in err


def test_bad_deepspeed_json_field(capsys, run_dir, tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 3}, "train_batch_size": 8}')
    err = _run(capsys, "--deepspeed", str(bad), *run_dir)
    assert "train_batch_size" in err and "derived" in err


def test_distillation_stage_without_teacher_checkpoint(capsys, run_dir):
    err = _run(capsys, "--config", "tiny_context_dmd", "distill.teacher_checkpoint=", *run_dir)
    assert "train.stage=context_dmd distils a frozen teacher" in err and "distill.teacher_checkpoint" in err


def test_distillation_stage_with_a_missing_teacher_checkpoint(capsys, run_dir, tmp_path):
    err = _run(capsys, "--config", "tiny_local_dmd", f"distill.teacher_checkpoint={tmp_path / 'nowhere'}", *run_dir)
    assert f"distill.teacher_checkpoint={tmp_path / 'nowhere'} does not exist" in err and "train stage 0" in err


def test_teacher_checkpoint_of_another_geometry(capsys, run_dir, tmp_path):
    save_diffusers_dir(WanDiT(load_config("tiny", ["model.num_layers=3"]).model), tmp_path / "other")
    err = _run(capsys, "--config", "tiny_longlive", f"distill.teacher_checkpoint={tmp_path / 'other'}", *run_dir)
    assert "the checkpoint has 3: set model.num_layers=3" in err


def test_ode_init_without_its_trajectories(capsys, run_dir, tmp_path):
    save_diffusers_dir(WanDiT(load_config("tiny").model), tmp_path / "teacher")
    err = _run(capsys, "--config", "tiny_ode_init", f"distill.teacher_checkpoint={tmp_path / 'teacher'}",
               f"data.shards={tmp_path / 'pairs' / 'manifest.json'}", *run_dir)
    assert "data.shards" in err and "data_pipeline.make_ode_pairs" in err


def test_memory_context_that_does_not_fit_the_rope_range(capsys, run_dir):
    err = _run(capsys, "--config", "tiny_context_dmd", "memory.rope_length=24", *run_dir)
    assert "memory.rope_length=24" in err and "set memory.rope_length >= 30" in err
