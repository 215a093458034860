"""`ctxf.train --validate-only`: the dry run prints the plan without starting anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxf.train import main

REPO = Path(__file__).resolve().parents[2]
WAN_64 = ["--validate-only", "--world-size", "64", "--config", "wan1.3b", "train.global_batch_size=64",
          "parallel.context_parallel_degree=4"]


def test_dry_run_prints_groups_batch_and_memory(capsys):
    assert main(WAN_64) == 0
    out = capsys.readouterr().out
    for needed in ("64 ranks (no process started)", "16 x 4 ranks: [0, 1, 2, 3], [4, 5, 6, 7], ...",
                   "accumulation 4 x data-parallel 16 = global 64", "teacher weights", "activations",
                   "KV cache", '"train_batch_size": 256'):
        assert needed in out, needed


def test_impossible_plan_is_a_clear_error(capsys):
    assert main(["--validate-only", "--world-size", "64", "--config", "wan1.3b", "train.global_batch_size=2",
                 "parallel.context_parallel_degree=1"]) == 2
    assert "train.global_batch_size=2 is not a multiple" in capsys.readouterr().err


@pytest.mark.parametrize("launch", [["-m", "ctxf.train"], [str(REPO / "ctxf" / "train.py")]], ids=["module", "script"])
def test_runs_as_module_and_as_script(launch, tmp_path):
    env = {**os.environ, "PYTHONPATH": ""}  # the script form must find the package by itself, from anywhere
    run = subprocess.run([sys.executable, *launch, *WAN_64, "--deepspeed", "ds_configs/zero3_offload.json"],
                         cwd=REPO if launch[0] == "-m" else tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "offload_optimizer" in run.stdout


@pytest.mark.parametrize("stage, needed", [
    ("ode_init", ["stage ode_init: 3000 steps, window 21 latents"]),
    ("local_dmd", ["stage local_dmd: 600 steps, window 21 latents, memory slow_fast, teacher context none, "
                   "guidance 3, generator every 5, lr 2e-06 / 4e-07, EMA 0.99 from step 200, grad clip 2"]),
    ("context_dmd", ["stage context_dmd: 2001 steps, window 21 latents, memory slow_fast, rollouts up to 84 -> 105 "
                     "latents over 600 steps (from 21), teacher context memory, guidance 5, generator every 5, "
                     "lr 2e-06 / 4e-07, EMA 0.99 from step 200, grad clip 2",
                     "accumulation 4 x data-parallel 16 = global 64"]),
    ("self_forcing", ["stage self_forcing: 600 steps, window 21 latents, memory rolling, teacher context none"]),
    ("longlive", ["stage longlive: 2001 steps, window 21 latents, memory sink_local, rollouts up to 240 -> 240",
                  "teacher context none, guidance 3"]),
    ("longlive_slowfast", ["stage longlive: 2001 steps, window 21 latents, memory slow_fast, rollouts up to 84 -> "
                           "105 latents over 600 steps (from 21), teacher context none, guidance 5"]),
])
def test_stage_presets_plan_on_64_ranks_with_the_papers_numbers(stage, needed, capsys):
    assert main(["--validate-only", "--world-size", "64", "--config", f"wan1.3b_{stage}"]) == 0
    out = capsys.readouterr().out
    assert "64 ranks (no process started)" in out and "global 64" in out
    for text in needed:
        assert text in out, text


def test_the_plan_names_a_rollout_prefix(capsys):
    assert main(["--validate-only", "--world-size", "64", "--config", "wan1.3b_context_dmd",
                 "distill.prefix_frames=21"]) == 0
    assert "rollouts after a clip prefix of up to 21 latents" in capsys.readouterr().out
