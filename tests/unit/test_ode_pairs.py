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


class ContextCopyFlow:
    """The exact flow towards the last context frame: the window's x0 is that frame repeated, so a teacher
    that reads its context ends every trajectory on it. Records the per-frame timesteps it was given."""

    def __init__(self, num_context):
        self.num_context, self.frame_t = num_context, []

    def __call__(self, latents, frame_t, text):
        self.frame_t.append(frame_t.clone())
        n = self.num_context
        x, x0 = latents[:, :, n:], latents[:, :, n - 1:n]
        sigma = (frame_t[:, n:] / 1000.0)[:, None, :, None, None]
        return torch.cat([torch.zeros_like(latents[:, :, :n]), (x - x0) / sigma], dim=2)


def test_trajectory_with_context_ends_on_what_the_context_dictates():
    generator = torch.Generator().manual_seed(1)
    context, noise = torch.randn(1, 3, 4, 2, 2, generator=generator), torch.randn(1, 3, 3, 2, 2, generator=generator)
    flow = ContextCopyFlow(num_context=4)
    timesteps = [1000.0, 600.0, 250.0]
    states = teacher_trajectory(flow, noise, torch.ones(1, 5, 8), torch.zeros(1, 5, 8), timesteps, substeps=2,
                                guidance=3.0, context=context)
    target = context[:, :, -1:].expand_as(noise)
    for state, t in zip(states, timesteps + [0.0]):
        torch.testing.assert_close(state, target + t / 1000 * (noise - target), rtol=1e-5, atol=1e-5)
    assert all(torch.all(t[:, :4] == 0) and torch.all(t[:, 4:] > 0) for t in flow.frame_t)


def _context_settings(cache, teacher_dir):
    return ["--config", "tiny_ode_init", "--set", f"distill.teacher_checkpoint={teacher_dir}",
            "--set", f"data.cache_dir={cache}", "--set", "data.default_clips=4", "--set", "data.default_max_gap=8",
            "--set", "distill.ode_solver_substeps=1", "--samples-per-shard", "2", "--context-from", "builtin"]


def test_context_pairs_continue_training_clips_and_resume(tmp_path, teacher_dir):
    from ctxf.data.default_shards import ensure_default_shards
    from ctxf.data.loader import ShardLoader
    from ctxf.models.flow_matching import sampling_timesteps
    from ctxf.models.text_encoder import build_text_encoder
    from ctxf.models.weights import load_model_weights
    from ctxf.stages.context_layout import layout_at

    common = _context_settings(tmp_path / "cache", teacher_dir)
    assert main([*common, "--out", str(tmp_path / "fresh"), "--num-samples", "5"]) == 0
    assert main([*common, "--out", str(tmp_path / "resumed"), "--num-samples", "3"]) == 0
    (tmp_path / "resumed" / "manifest.json").unlink()
    assert main([*common, "--out", str(tmp_path / "resumed"), "--num-samples", "5"]) == 0
    fresh, resumed = _read_shards(tmp_path / "fresh"), _read_shards(tmp_path / "resumed")
    assert sorted(fresh) == sorted(resumed)
    assert all(fresh[key]["latents.safetensors"] == resumed[key]["latents.safetensors"] for key in fresh)

    cfg = load_config("tiny_ode_init", [f"data.cache_dir={tmp_path / 'cache'}", "data.default_clips=4",
                                        "data.default_max_gap=8", "distill.ode_solver_substeps=1"])
    loader = ShardLoader(str(ensure_default_shards(cfg)), batch_size=1, max_length=cfg.text.max_length,
                         shuffle_buffer=0)
    clips = {batch.keys[0]: batch for batch in loader}
    # the world's longest timeline with gaps up to 8: entry 16 + visible 16 + gap 8 + 8 after
    assert {batch.latents.shape[2] for batch in clips.values()} == {48}
    assert all(batch.meta[0]["curtain"]["gap"] <= 8 for batch in clips.values())
    teacher = WanDiT(cfg.model)
    load_model_weights(teacher, teacher_dir)
    empty = build_text_encoder(cfg.text, cfg.model.text_dim).encode([""])
    for index, key in enumerate(sorted(fresh)):
        meta = json.loads(fresh[key]["json"])
        clip = clips[meta["clip"]]
        start = meta["context_frames"]
        assert meta["context_clip_frames"] == 48 and start % 3 == 0 and 9 <= start <= 48 - 9
        latents = load_safetensors(fresh[key]["latents.safetensors"])["latents"]
        assert latents.shape == (12, 48 + 5 * 9, 8, 8)
        torch.testing.assert_close(latents[:, :48], clip.latents[0])
        noise = latents[:, 48:57][None]
        context = clip.latents[:, :, layout_at(start, cfg.teacher).context]
        trajectory = teacher_trajectory(teacher, noise, clip.text, empty, sampling_timesteps(cfg.diffusion), 1,
                                        cfg.distill.teacher_guidance, context=context)
        torch.testing.assert_close(latents[:, 48:][None], trajectory[:, 0].permute(1, 0, 2, 3, 4).flatten(1, 2)[None],
                                   rtol=1e-5, atol=1e-5)
        blind = teacher_trajectory(teacher, noise, clip.text, empty, sampling_timesteps(cfg.diffusion), 1,
                                   cfg.distill.teacher_guidance)
        assert not torch.allclose(blind[-1], trajectory[-1], atol=1e-3)


def test_student_continues_a_window_as_one_block_causal_pass_over_the_clip_would(tmp_path, teacher_dir):
    """The ODE-init student with context: prefill, then per chunk a prediction against the memory with the
    trajectory's clean chunks written in. With the whole history in memory that equals one block-causal
    forward over [context | clean chunks before | noisy chunk] (context and clean chunks at t = 0)."""
    from ctxf.models.flow_matching import predict_x0
    from ctxf.stages.base import Runtime
    from ctxf.stages.ode_init import ODEInit

    cfg = load_config("tiny_ode_init", [f"distill.teacher_checkpoint={teacher_dir}", "memory.policy=full"])
    method = ODEInit(Runtime(config=cfg, device=torch.device("cpu"), data_parallel_rank=0,
                             build_engine=lambda model, role: model, sequence_parallel=None))
    student = method.engines["student"]
    generator = torch.Generator().manual_seed(6)
    context, noisy, clean = (torch.randn(1, 12, frames, 8, 8, generator=generator) for frames in (6, 6, 6))
    timestep = torch.tensor([[900.0] * 3 + [300.0] * 3])
    text = torch.randn(1, cfg.text.max_length, cfg.model.text_dim, generator=generator)
    predicted = method._continue(context, noisy, timestep, clean, text)
    assert predicted.requires_grad
    for chunk in range(2):
        window = slice(3 * chunk, 3 * chunk + 3)
        sequence = torch.cat([context, clean[:, :, :3 * chunk], noisy[:, :, window]], dim=2)
        frame_t = torch.zeros(1, sequence.shape[2])
        frame_t[:, -3:] = timestep[0, 3 * chunk]
        with torch.no_grad():
            velocity = student(sequence, frame_t, text, num_frames_per_block=3)[:, :, -3:]
        expected = predict_x0(noisy[:, :, window], velocity, timestep[:, 3 * chunk] / 1000.0)
        torch.testing.assert_close(predicted[:, :, window].detach(), expected, rtol=1e-4, atol=1e-5)
