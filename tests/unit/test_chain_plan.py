"""`python -m ctxf.chain` without running it: stage order, links by run directory, per-stage
overrides, and skipping stages whose run is complete."""

from __future__ import annotations

import json

import pytest

from ctxf.chain import commands, main, stage_overrides


class Args:
    def __init__(self, root, settings=()):
        self.root, self.nproc, self.master_port, self.preset_prefix = str(root), 2, 29600, "tiny"
        self.pairs, self.seconds, self.set, self.video_dir = 8, 2.0, list(settings), None


def _names(steps):
    return [name for name, _ in steps]


def test_stages_in_order_each_linked_to_the_previous_run(tmp_path):
    steps = dict(commands(Args(tmp_path)))
    assert list(steps) == ["teacher", "ode_pairs", "ode_init", "context_dmd", "generate"]
    assert f"distill.teacher_checkpoint={tmp_path / 'teacher'}" in steps["ode_init"]
    assert f"data.shards={tmp_path / 'ode_pairs' / 'manifest.json'}" in steps["ode_init"]
    assert f"train.init_checkpoint={tmp_path / 'ode_init'}" in steps["context_dmd"]
    assert str(tmp_path / "context_dmd") == steps["generate"][steps["generate"].index("--checkpoint") + 1]
    # 8 pairs on 2 ranks: shards of 4, so each rank reads one
    assert steps["ode_pairs"][steps["ode_pairs"].index("--samples-per-shard") + 1] == "4"


def test_overrides_go_to_every_stage_or_to_the_named_one():
    settings = ["train.num_steps=4", "teacher:train.num_steps=9", "data.shards=/a:b"]
    assert stage_overrides(settings, "teacher") == ["train.num_steps=4", "train.num_steps=9", "data.shards=/a:b"]
    assert stage_overrides(settings, "context_dmd") == ["train.num_steps=4", "data.shards=/a:b"]
    with pytest.raises(SystemExit, match="unknown stage 'teachr'"):
        stage_overrides(["teachr:train.num_steps=1"], "teacher")


def test_complete_stages_are_skipped_and_others_resume(tmp_path):
    for stage, step in (("teacher", 200), ("ode_init", 40), ("context_dmd", 7)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "run_status.json").write_text(json.dumps({"status": "complete", "step": step}))
    # teacher and ode_init finished their presets' steps; context_dmd stopped at 7 of 20
    assert _names(commands(Args(tmp_path))) == ["ode_pairs", "context_dmd", "generate"]
    # asking for more teacher steps runs the teacher again (it resumes from its checkpoint)
    assert _names(commands(Args(tmp_path, ["teacher:train.num_steps=300"])))[0] == "teacher"


def test_help_names_the_stages(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "stage 0 -> ODE pairs -> ODE init -> contextual DMD" in capsys.readouterr().out
