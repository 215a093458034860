"""The SLURM scripts without a cluster: syntax, the 8 x 8 layout they ask for, the 64-rank dry run of
the configuration they train (wan1.3b and wan14b, under 80 GB per GPU), and their error messages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "slurm" / "train.sh"
TRAIN_64 = REPO / "slurm" / "train_64gpu.sh"
GPU_MEMORY_GB = 80.0


def sbatch_directives(script: Path) -> dict[str, str]:
    """`#SBATCH --name=value` lines of a script ({"requeue": ""} for a flag)."""
    found = {}
    for line in script.read_text().splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if match:
            found[match.group(1)] = match.group(2) or ""
    return found


def script_env(**extra: str) -> dict[str, str]:
    """The environment minus any SLURM job this test might run inside, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "CTXF_"))}
    if (Path(sys.prefix) / "bin" / "activate").exists():
        env["CTXF_VENV"] = sys.prefix
    return {**env, "CTXF_REPO": str(REPO), **extra}


@pytest.mark.parametrize("script", [TRAIN, TRAIN_64], ids=["train", "train_64gpu"])
def test_scripts_parse(script):
    run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_64gpu_script_asks_for_8_nodes_of_8_gpus_with_signal_and_requeue():
    directives = sbatch_directives(TRAIN_64)
    assert directives["nodes"] == "8" and directives["ntasks-per-node"] == "8" and directives["gpus-per-node"] == "8"
    assert re.fullmatch(r"USR1@\d+", directives["signal"]), directives["signal"]
    assert "requeue" in directives
    assert directives["output"].count("%j") == 1 and directives["open-mode"] == "append"  # one log per job id


@pytest.mark.parametrize("preset", ["wan1.3b", "wan14b"])
def test_64gpu_configuration_passes_the_64_rank_dry_run_under_80_gb(preset):
    directives = sbatch_directives(TRAIN_64)
    ranks = int(directives["nodes"]) * int(directives["ntasks-per-node"])
    run = subprocess.run(["bash", str(TRAIN_64)], env=script_env(CTXF_DRY_RUN="1", CTXF_CONFIG=preset),
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"dry run: preset {preset}, {ranks} ranks" in run.stdout
    total = re.search(r"^\s+total\s+([\d.]+) GB", run.stdout, re.MULTILINE)
    assert total, run.stdout
    assert float(total.group(1)) < GPU_MEMORY_GB, run.stdout


def test_wan14b_preset_is_the_published_14b_geometry():
    """Oracle: diffusers' WanTransformer3DModel built with Wan2.1-T2V-14B's published config."""
    from diffusers import WanTransformer3DModel

    from ctxf.config import load_config
    from ctxf.models.wan import WanDiT

    with torch.device("meta"):
        reference = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
                                          in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
                                          ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                                          qk_norm="rms_norm_across_heads", eps=1e-6)
        ours = WanDiT(load_config("wan14b").model)
    shapes = {name: tuple(p.shape) for name, p in ours.named_parameters()}
    assert shapes == {name: tuple(p.shape) for name, p in reference.named_parameters()}


def test_train_script_outside_a_job_is_one_clear_error():
    run = subprocess.run(["bash", str(TRAIN)], env=script_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == "error: no SLURM job: submit with sbatch (or run inside salloc)"


def test_train_script_names_a_missing_checkout(tmp_path):
    env = script_env(SLURM_JOB_ID="7", CTXF_REPO=str(tmp_path))
    run = subprocess.run(["bash", str(TRAIN)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert f"{tmp_path} is not a ctxf checkout" in run.stderr and "CTXF_REPO" in run.stderr


def test_bad_configuration_fails_the_dry_run_with_one_line():
    env = script_env(CTXF_DRY_RUN="1", CTXF_OVERRIDES="train.stage=techer")
    run = subprocess.run(["bash", str(TRAIN_64)], env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.stage='techer'"), run.stderr  # no traceback
    assert "did you mean teacher" in lines[0]
