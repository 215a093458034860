"""`ctxf-generate` end to end: video, latents, summary, prefix continuation, errors."""

import json

import av
import torch
from safetensors.torch import load_file, save_file

from ctxf.inference.cli import main


def generate(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["--output-dir", str(out), *args]) == 0
    return out, load_file(str(out / "latents.safetensors"))["latents"]


def test_writes_viewable_video_latents_and_summary(tmp_path, capsys):
    out, latents = generate(tmp_path, "run", "--seconds", "3")
    assert latents.shape == (1, 12, 12, 8, 8)  # 3 s x 4 latent frames per second
    with av.open(str(out / "video.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape[0] >= 256
    record = json.loads((out / "generation.json").read_text())
    assert len(record["chunks"]) == 4 and record["summary"]["fps"] > 0
    assert record["config"]["memory"]["policy"] == "slow_fast"
    printed = capsys.readouterr().out
    assert "frames/s" in printed and "peak memory" in printed


def test_bounded_memory_equals_full_history_until_it_evicts(tmp_path):
    # 24 frames: the Slow-Fast cache (21 frames) has evicted nothing before the last chunk is drawn
    _, slow_fast = generate(tmp_path, "sf", "--seconds", "6", "--memory", "slow_fast")
    _, full = generate(tmp_path, "full", "--seconds", "6", "--memory", "full")
    assert torch.equal(slow_fast, full)


def test_continues_a_prefix(tmp_path):
    prefix = torch.randn(12, 5, 8, 8)
    save_file({"latents": prefix}, str(tmp_path / "prefix.safetensors"))
    _, continued = generate(tmp_path, "cont", "--seconds", "3", "--prefix-latents", str(tmp_path / "prefix.safetensors"))
    _, fresh = generate(tmp_path, "fresh", "--seconds", "3")
    assert continued.shape == (1, 12, 5 + 12, 8, 8)
    assert torch.equal(continued[0, :, :5], prefix)
    # the same noise seed, but the continuation attends to the prefix, so it differs
    assert not torch.allclose(continued[:, :, 5:], fresh)


def test_bad_config_exits_2_and_names_the_key(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path), "memory.polcy=full"]) == 2
    assert "memory.polcy" in capsys.readouterr().err


def test_missing_weights_paths_fail_fast_with_one_line(tmp_path, capsys):
    # the Wan preset without a VAE directory: refused before a 1.4B-parameter model is built
    assert main(["--config", "wan1.3b", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "codec.vae_path" in err and "Traceback" not in err
    assert main(["--output-dir", str(tmp_path), "--prefix-latents", str(tmp_path / "missing.npy")]) == 2
    assert "prefix latents" in capsys.readouterr().err


def test_ctrl_c_while_starting_up_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import ctxf.inference.cli as cli

    def interrupted(cfg, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    assert main(["--seconds", "1", "--output-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.startswith("ctxf-generate: interrupted") and "Traceback" not in err
