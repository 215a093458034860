"""The curtain harness on a real (tiny, random) model: its continuation is exactly what `ctxf-generate`
streams from the same prefix, and the command line writes its JSON and plot or fails clearly."""

import json

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ctxf.config import load_config
from ctxf.eval import curtain
from ctxf.eval.continuation import continuation_from_config
from ctxf.inference.cli import main as generate_main
from ctxf.models.codec import video_to_uint8
from data_pipeline.clip_encoding import ClipEncoder
from data_pipeline.curtain import FIXED_CAPTION, CurtainSpec

SPEC = CurtainSpec(gap_range=(1, 8), num_frames=48, min_after=4)


def test_continuation_is_what_ctxf_generate_streams(tmp_path):
    case = curtain.make_case(SPEC, seed=1, index=0, gap_frames=4, score_frames=4)
    num_frames = case.continuation.shape[0]
    cfg = load_config("tiny", ["inference.seed=3", "memory.policy=slow_fast"])
    ours = continuation_from_config(cfg, "streaming").continue_video(case.prefix, num_frames, FIXED_CAPTION)
    assert ours.shape == case.continuation.shape and ours.dtype == np.uint8

    prefix_file = tmp_path / "prefix.safetensors"
    save_file({"latents": ClipEncoder(cfg).latents(case.prefix)[None].contiguous()}, str(prefix_file))
    out = tmp_path / "generated"
    assert generate_main(["--prefix-latents", str(prefix_file), "--seconds", str(num_frames / 4), "--seed", "3",
                          "--memory", "slow_fast", "--prompt", FIXED_CAPTION, "--output-dir", str(out)]) == 0
    latents = load_file(str(out / "latents.safetensors"))["latents"]
    pixels = latents[:, :, case.prefix.shape[0]:]
    theirs = video_to_uint8(torch.nn.functional.pixel_shuffle(
        pixels[0].permute(1, 0, 2, 3), 2).permute(1, 0, 2, 3)[None].clamp(-1, 1))[0].numpy()
    assert np.array_equal(ours, theirs)


def test_command_line_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "eval"
    assert curtain.main(["--clips", "2", "--gaps", "0,0.5", "--score-frames", "2", "--out", str(out)]) == 0
    report = json.loads((out / "curtain_eval.json").read_text())
    assert [g["gap_frames"] for g in report["gaps"]] == [0, 2]
    assert all(len(clip["scored_frames"]) == 2 for g in report["gaps"] for clip in g["clips"])
    assert (out / "curtain_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "effective context length" in capsys.readouterr().out


def test_command_line_refuses_bad_settings_before_loading(tmp_path, capsys):
    assert curtain.main(["--clips", "1", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "at least 2" in err and "Traceback" not in err
    assert not (tmp_path / "curtain_eval.json").exists()
