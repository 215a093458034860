"""`python -m ctxf.eval.experiment` without running it: which stages it launches, from which runs,
with which budgets, and which it leaves out because they are complete."""

from __future__ import annotations

import json

import pytest

from ctxf.eval.experiment import markdown_table, parse_args, training_steps


def _args(root, *extra):
    return parse_args(["--root", str(root), "--teacher-steps", "30", "--init-steps", "7", "--student-steps", "11",
                       *extra])


def _value(command, key):
    """The value a command gives `key`, as a bare KEY=VALUE argument or as --set=KEY=VALUE."""
    items = [item.removeprefix("--set=") for item in command]
    return [item.split("=", 1)[1] for item in items if item.startswith(f"{key}=")][-1]


def test_four_students_share_the_init_the_teacher_data_and_the_budget(tmp_path):
    steps = dict(training_steps(_args(tmp_path)))
    assert list(steps) == ["teacher", "ode_pairs", "ode_init", "self_forcing", "longlive", "longlive_slowfast",
                           "context_dmd"]
    assert _value(steps["teacher"], "train.num_steps") == "30"
    assert _value(steps["ode_init"], "data.shards") == str(tmp_path / "ode_pairs" / "manifest.json")
    for stage in ("self_forcing", "longlive", "longlive_slowfast", "context_dmd"):
        command = steps[stage]
        assert command[command.index("--config") + 1] == f"tiny_{stage}"
        assert _value(command, "train.num_steps") == "11"
        assert _value(command, "train.init_checkpoint") == str(tmp_path / "ode_init")
        assert _value(command, "distill.teacher_checkpoint") == str(tmp_path / "teacher")
        assert _value(command, "data.cache_dir") == str(tmp_path / "data")
        assert _value(command, "train.seed") == "0"
        # every student continues clips of up to 48 frames (ctxf.eval.experiment.STUDENT_PREFIX)
        assert _value(command, "distill.prefix_frames") == "48"
        # the one-caption world: the teacher unguided (ctxf.eval.experiment.GUIDANCE), in the pairs too
        assert _value(command, "distill.teacher_guidance") == "1"
    assert _value(steps["ode_pairs"], "distill.teacher_guidance") == "1"
    # one training world for all, its gaps within the teacher's 30-frame context; the pairs continue its clips
    assert {_value(command, "data.default_max_gap") for command in steps.values()} == {"24"}
    pairs = steps["ode_pairs"]
    assert pairs[pairs.index("--context-from") + 1] == "builtin"
    assert "distill.prefix_frames" not in " ".join(steps["ode_init"] + steps["teacher"])
    assert _value(steps["ode_init"], "train.student_lr") == "2e-4"


def test_complete_runs_are_left_out_and_a_larger_budget_resumes(tmp_path):
    for stage, step in (("teacher", 30), ("ode_init", 7), ("self_forcing", 11), ("longlive", 4)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "run_status.json").write_text(json.dumps({"status": "complete", "step": step}))
    (tmp_path / "ode_pairs").mkdir()
    (tmp_path / "ode_pairs" / "manifest.json").write_text("{}")
    assert [name for name, _ in training_steps(_args(tmp_path))] == ["longlive", "longlive_slowfast", "context_dmd"]
    assert [name for name, _ in training_steps(_args(tmp_path, "--set", "teacher:train.num_steps=40"))][0] == "teacher"


def test_stage_prefixes_are_checked_and_bad_budgets_refused(tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown stage 'contextdmd'"):
        training_steps(_args(tmp_path, "--set", "contextdmd:train.num_steps=1"))
    with pytest.raises(SystemExit):
        parse_args(["--clips", "1"])
    assert "--clips must be at least 2" in capsys.readouterr().err


def test_table_has_one_line_per_row_and_one_column_per_gap():
    gaps = [{"gap_seconds": 0.0, "recall": 1.0, "control_recall": 0.25, "background_psnr": 30.0},
            {"gap_seconds": 4.0, "recall": 0.5, "control_recall": 0.25, "background_psnr": 20.0}]
    row = {"label": "(c) Context Forcing", "effective_context_seconds": 4.0, "gaps": gaps, "background_psnr": 25.0,
           "training_seconds": 61.4}
    lines = markdown_table([row, {**row, "label": "x", "effective_context_seconds": None,
                                  "training_seconds": None}]).splitlines()
    assert lines[0] == ("| row | effective context (s) | recall @ 0 s | recall @ 4 s | control recall | "
                        "background PSNR (dB) | training s |")
    assert lines[2] == "| (c) Context Forcing | 4 | 1.000 | 0.500 | 0.250 | 25.00 | 61 |"
    assert lines[3] == "| x | undefined | 1.000 | 0.500 | 0.250 | 25.00 | - |"


def test_a_bad_setting_fails_before_anything_runs(tmp_path, capsys):
    from ctxf.eval.experiment import main

    assert main(["--root", str(tmp_path / "x"), "--set", "longlive:train.no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "no_such_key" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == []
