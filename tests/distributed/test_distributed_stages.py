"""Each distillation stage and baseline preset trains a few steps on 2 gloo ranks through the real
trainer: losses finite, the trained roles' parameters changed, the frozen teacher bit-identical."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from gloo_workers import run_workers

from ctxf.ckpt.checkpoint_files import save_diffusers_dir
from ctxf.config import load_config
from ctxf.models.wan import WanDiT
from ctxf.parallel.plan import plan
from ctxf.preflight import preflight

REPO = Path(__file__).resolve().parents[2]


def _config(preset: str, tmp_path, *extra: str):
    torch.manual_seed(11)
    teacher_dir = tmp_path / "teacher_weights"
    if not teacher_dir.exists():
        save_diffusers_dir(WanDiT(load_config("tiny").model), teacher_dir)
    config = load_config(preset, [f"distill.teacher_checkpoint={teacher_dir}", "train.init_checkpoint=",
                                  f"train.output_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}",
                                  "data.default_clips=8", "train.num_steps=2", "train.checkpoint_every=100",
                                  "distill.generator_every=2", "train.ema_decay=0.5", "train.ema_start_step=0",
                                  *extra])
    preflight(config, "never", 2)  # generates the built-in shards once, before the workers start
    return config


def _full(engine) -> dict[str, torch.Tensor]:
    from ctxf.parallel.engines import gather_parameters

    module = engine.module
    return gather_parameters(module, [name for name, _ in module.named_parameters()])


def train_stage(config, resume_from=None) -> dict:
    from ctxf.train import build_trainer

    trainer = build_trainer(config, plan(2, config))
    method = trainer.method
    before = {role: _full(engine) for role, engine in method.engines.items()}
    teacher = getattr(method, "teacher", None)
    teacher_before = {k: v.clone() for k, v in teacher.model.state_dict().items()} if teacher else {}
    frames, exits = [], []
    if hasattr(method, "rollout_frames"):
        import ctxf.stages.dmd as dmd

        original_draw = dmd.draw_exit_steps

        def recording_draw(*args):
            exits.append(original_draw(*args))
            return exits[-1]

        dmd.draw_exit_steps = recording_draw
        original = method.rollout_frames

        def recording(step):
            frames.append((step, original(step)))
            return frames[-1][1]

        method.rollout_frames = recording
    result = trainer.run(resume_from)
    after = {role: _full(engine) for role, engine in method.engines.items()}
    changed = {role: sum(not torch.equal(before[role][k], after[role][k]) for k in before[role])
               for role in before}
    teacher_same = all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in teacher_before.items())
    return {"losses": result.losses, "changed": changed, "teacher_same": teacher_same,
            "num_params": {role: len(p) for role, p in before.items()}, "rollout_frames": frames, "exit_steps": exits,
            "ema_roles": sorted(trainer.emas), "status": result.status, "student_before": before.get("student")}


def _check(results, trained_roles):
    for rank_result in results:
        assert rank_result["status"] == "complete"
        assert all(math.isfinite(v) for v in rank_result["losses"].values()) and len(rank_result["losses"]) >= 2
        for role in trained_roles:
            # every parameter of a trained role moves (AdamW's first step moves each by ~lr)
            assert rank_result["changed"][role] == rank_result["num_params"][role], role
        assert rank_result["teacher_same"]
    assert results[0]["losses"] == results[1]["losses"]  # the reduced losses agree


@pytest.mark.parametrize("preset", ["tiny_local_dmd", "tiny_self_forcing"])
def test_local_dmd_presets(preset, tmp_path):
    results = run_workers(2, train_stage, _config(preset, tmp_path, "train.sample_every=2"), timeout=180)
    _check(results, ["student", "critic"])
    assert results[0]["ema_roles"] == ["student"]
    assert (tmp_path / "run" / "samples" / "step_00000002.png").is_file()  # the student's streamed sample
    assert results[0]["rollout_frames"] == [(0, 9), (1, 9)]


@pytest.mark.parametrize("preset, extra", [
    ("tiny_context_dmd", ()),
    ("tiny_context_dmd", ("distill.teacher_context=contiguous",)),
    ("tiny_longlive", ()),
    ("tiny_longlive_slowfast", ()),
    ("tiny_context_dmd", ("distill.prefix_frames=6",)),
], ids=["context-memory", "context-contiguous", "longlive", "longlive-slowfast", "context-after-a-prefix"])
def test_context_dmd_presets(preset, extra, tmp_path):
    results = run_workers(2, train_stage, _config(preset, tmp_path, *extra), timeout=180)
    _check(results, ["student", "critic"])
    assert results[0]["rollout_frames"] == results[1]["rollout_frames"]
    # one exit step per chunk of each micro-batch's rollout, the same on both ranks
    assert results[0]["exit_steps"] == results[1]["exit_steps"]
    assert [len(e) * 3 for e in results[0]["exit_steps"]] == [f for _, f in results[0]["rollout_frames"]]


def test_context_dmd_full_history_with_context_parallelism(tmp_path):
    config = _config("tiny_context_dmd", tmp_path, "distill.teacher_context=full",
                     "parallel.context_parallel_degree=2")
    results = run_workers(2, train_stage, config, timeout=180)
    _check(results, ["student", "critic"])


def test_resuming_mid_curriculum_continues_it_exactly(tmp_path):
    """4 steps straight vs 2 steps, then a resumed run: the same rollout lengths and per-step losses."""
    base = ("train.num_steps=4", "train.checkpoint_every=2", "distill.rollout_growth_steps=4",
            "distill.rollout_frames_start=9", "distill.rollout_frames_end=27")
    straight = run_workers(2, train_stage, _config("tiny_context_dmd", tmp_path, *base), timeout=240)[0]
    step_two = tmp_path / "run" / "checkpoints" / "step_00000002"
    resumed_config = _config("tiny_context_dmd", tmp_path, *base, f"train.output_dir={tmp_path / 'resumed'}")
    resumed = run_workers(2, train_stage, resumed_config, step_two, timeout=240)[0]
    assert [frames for step, frames in resumed["rollout_frames"]] == [f for s, f in straight["rollout_frames"] if s >= 2]
    assert [step for step, _ in resumed["rollout_frames"]] == [2, 3]
    assert sorted(resumed["losses"]) == [3, 4]
    assert resumed["losses"] == {step: straight["losses"][step] for step in (3, 4)}


@pytest.mark.parametrize("context", [False, True], ids=["from-nothing", "continuing-clips"])
def test_ode_init_preset(context, tmp_path):
    """With context the two ranks' windows start at different frames (prefills of different lengths): the
    ranks must still run the same forwards under ZeRO-3, or the step hangs."""
    from data_pipeline.make_ode_pairs import main as make_ode_pairs

    torch.manual_seed(11)
    teacher_dir = tmp_path / "teacher_weights"
    save_diffusers_dir(WanDiT(load_config("tiny").model), teacher_dir)
    clips = ["--context-from", "builtin", "--set", f"data.cache_dir={tmp_path / 'cache'}",
             "--set", "data.default_clips=8"] if context else []
    assert make_ode_pairs(["--config", "tiny_ode_init", "--set", f"distill.teacher_checkpoint={teacher_dir}",
                           "--set", "distill.ode_solver_substeps=1", "--out", str(tmp_path / "pairs"),
                           "--num-samples", "4", "--samples-per-shard", "2", "--seed", "1", *clips]) == 0
    if context:
        from ctxf.data.loader import ShardLoader

        loader = ShardLoader(str(tmp_path / "pairs" / "manifest.json"), batch_size=1, max_length=16, rank=0,
                             world_size=2, shuffle_buffer=0)
        other = ShardLoader(str(tmp_path / "pairs" / "manifest.json"), batch_size=1, max_length=16, rank=1,
                            world_size=2, shuffle_buffer=0)
        firsts = [next(iter(reader)).meta[0]["context_frames"] for reader in (loader, other)]
        assert firsts[0] != firsts[1], firsts  # the two ranks' first steps prefill different lengths
    # every parameter partitioned (none kept whole below a size threshold), so each forward gathers
    ds_config = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3_partition_all.json").write_text(json.dumps(ds_config))
    config = _config("tiny_ode_init", tmp_path, f"data.shards={tmp_path / 'pairs' / 'manifest.json'}",
                     "distill.ode_solver_substeps=1", f"parallel.ds_config={tmp_path / 'zero3_partition_all.json'}")
    results = run_workers(2, train_stage, config, timeout=180)
    _check(results, ["student"])
    # the student started from the teacher's weights (train.init_checkpoint empty: the teacher's)
    teacher = WanDiT(load_config("tiny").model)
    from ctxf.models.weights import load_model_weights

    load_model_weights(teacher, teacher_dir)
    for name, value in teacher.state_dict().items():
        assert torch.equal(results[0]["student_before"][name], value), name
