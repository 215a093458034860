"""ODE trajectories of the teacher: exact on a flow whose solution is known, guided against the
empty caption, and written to shards that resume after an interruption."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as load_safetensors

from ctxf.ckpt.checkpoint_files import save_diffusers_dir
from ctxf.config import load_config
from ctxf.models.wan import WanDiT
from ctxf.stages.ode_init import teacher_trajectory
from data_pipeline.make_ode_pairs import main


class PointFlow:
    """The exact flow-matching velocity towards one data point: v(x, sigma) = (x - x0) / sigma, x0
    chosen by the text (the empty caption, all zeros here, picks `unconditional_x0`). Its ODE
    solution is x(sigma) = x0 + sigma (noise - x0), which Euler steps follow exactly."""

    def __init__(self, conditional_x0, unconditional_x0):
        self.conditional_x0, self.unconditional_x0 = conditional_x0, unconditional_x0

    def __call__(self, x, t, text):
        x0 = self.unconditional_x0 if text.abs().sum() == 0 else self.conditional_x0
        return (x - x0) / (t / 1000.0).view(-1, 1, 1, 1, 1)


def test_trajectory_states_lie_on_the_exact_flow_with_guidance():
    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, 4, 2, 2)
    noise, cond_x0, uncond_x0 = (torch.randn(shape, generator=generator) for _ in range(3))
    guidance = 3.0
    guided_x0 = uncond_x0 + guidance * (cond_x0 - uncond_x0)  # the guided velocity points at this point
    timesteps = [1000.0, 800.0, 450.0, 100.0]
    states = teacher_trajectory(PointFlow(cond_x0, uncond_x0), noise, torch.ones(2, 5, 8), torch.zeros(1, 5, 8),
                                timesteps, substeps=3, guidance=guidance)
    assert states.shape == (5, *shape)
    for state, t in zip(states, timesteps + [0.0]):
        torch.testing.assert_close(state, guided_x0 + t / 1000 * (noise - guided_x0), rtol=1e-5, atol=1e-5)


def _read_shards(out_dir):
    import tarfile

    samples = {}
    for path in sorted(out_dir.glob("shard-*.tar")):
        with tarfile.open(path) as archive:
            for member in archive:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = archive.extractfile(member).read()
    return samples


@pytest.fixture
def teacher_dir(tmp_path):
    torch.manual_seed(4)
    save_diffusers_dir(WanDiT(load_config("tiny").model), tmp_path / "teacher")
    return tmp_path / "teacher"


def test_pairs_resume_after_an_interruption_and_match_a_fresh_run(tmp_path, teacher_dir, capsys):
    common = ["--config", "tiny_ode_init", "--set", f"distill.teacher_checkpoint={teacher_dir}",
              "--set", "distill.window_frames=3", "--set", "distill.ode_solver_substeps=1",
              "--samples-per-shard", "2"]
    assert main([*common, "--out", str(tmp_path / "fresh"), "--num-samples", "5"]) == 0
    # an interrupted run: two complete shards and a partial one; the rerun finishes the job
    assert main([*common, "--out", str(tmp_path / "resumed"), "--num-samples", "4"]) == 0
    (tmp_path / "resumed" / "manifest.json").unlink()
    (tmp_path / "resumed" / "shard-000002.tar.partial").write_bytes(b"half a shard")
    assert main([*common, "--out", str(tmp_path / "resumed"), "--num-samples", "5"]) == 0
    assert "1 trajectories (4 were already there)" in capsys.readouterr().out
    fresh, resumed = _read_shards(tmp_path / "fresh"), _read_shards(tmp_path / "resumed")
    assert sorted(fresh) == sorted(resumed) == [f"ode-{i:08d}" for i in range(5)]
    for key in fresh:
        assert fresh[key]["latents.safetensors"] == resumed[key]["latents.safetensors"]
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert manifest["num_samples"] == 5 and manifest["num_shards"] == 3
    latents = load_safetensors(fresh["ode-00000000"]["latents.safetensors"])["latents"]
    assert latents.shape == (12, 5 * 3, 8, 8)  # (4 timesteps + x0) x 3 frames
    meta = json.loads(fresh["ode-00000000"]["json"])
    assert len(meta["ode_timesteps"]) == 4 and meta["ode_timesteps"][0] == pytest.approx(1000.0)


def test_missing_teacher_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--config", "tiny_ode_init", "--set", f"distill.teacher_checkpoint={tmp_path / 'none'}",
              "--out", str(tmp_path / "out")])
    assert "distill.teacher_checkpoint" in capsys.readouterr().err
