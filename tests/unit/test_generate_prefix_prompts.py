"""`ctxf-generate` continuing a real video or an image, prompt schedules and --compare-memory
(acceptance 2 and 4)."""

import json
import struct
import zlib
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctxf.inference.cli import main

COLOR = (200, 40, 120)


def write_png(path, pixels: np.ndarray) -> None:
    """A PNG written by hand (zlib + chunks), so the product's PyAV decoding is checked against an
    encoder that is not PyAV."""
    height, width, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.tobytes() for row in pixels.astype(np.uint8))  # filter 0 on every row
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write_video(path, num_frames: int, fps: int, height: int, width: int, color) -> None:
    """An H.264 clip at an odd size and frame rate (yuv444p: 4:2:0 needs even sides), a solid colour
    with a bright bar moving down."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        stream.options = {"crf": "10"}
        for index in range(num_frames):
            pixels = np.empty((height, width, 3), np.uint8)
            pixels[:] = color
            pixels[(index * 3) % height] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["--output-dir", str(out), "--seconds", "1.5", *args]) == 0
    return out, load_file(str(out / "latents.safetensors"))["latents"]


def pixels_of(latents: torch.Tensor) -> torch.Tensor:
    """Pixel codec latents [C=3*2*2, h, w] of one frame -> mean RGB in 0..255 (the codec folds 2x2 pixels)."""
    rgb = latents.reshape(3, 4, *latents.shape[-2:])
    return (rgb.mean(dim=(1, 2, 3)) + 1) * 127.5


def test_continues_a_real_video_at_an_odd_size_and_frame_rate(tmp_path):
    # 10 frames at 7 fps = 1.43 s, 37 x 23 pixels -> 4 fps (6 frames), covering 16 x 16 then centre-cropped
    write_video(tmp_path / "a.mp4", 10, 7, 23, 37, COLOR)
    write_video(tmp_path / "b.mp4", 10, 7, 23, 37, (20, 160, 60))
    out, a = generate(tmp_path, "a", "--prefix-video", str(tmp_path / "a.mp4"))
    _, b = generate(tmp_path, "b", "--prefix-video", str(tmp_path / "b.mp4"))
    _, again = generate(tmp_path, "again", "--prefix-video", str(tmp_path / "a.mp4"))
    assert a.shape == (1, 12, 6 + 6, 8, 8)
    assert json.loads((out / "generation.json").read_text())["summary"]["num_prefix_frames"] == 6
    # the prefix is the video: its colour, away from the bright bar (H.264 at crf 10 is near lossless)
    corner = pixels_of(a[0, :, 0, 4:, 4:])
    assert (corner - torch.tensor(COLOR, dtype=torch.float32)).abs().max() < 6
    # the first generated chunk attends to the prefix: another video changes it; the same one does not
    assert torch.equal(a, again)
    assert not torch.allclose(a[:, :, 6:9], b[:, :, 6:9], atol=1e-4)


def test_starts_from_an_image(tmp_path):
    image = np.empty((12, 20, 3), np.uint8)
    image[:] = COLOR
    write_png(tmp_path / "still.png", image)
    image[:] = (0, 0, 255)
    write_png(tmp_path / "other.png", image)
    _, a = generate(tmp_path, "a", "--prefix-image", str(tmp_path / "still.png"))
    _, b = generate(tmp_path, "b", "--prefix-image", str(tmp_path / "other.png"))
    assert a.shape == (1, 12, 1 + 6, 8, 8)  # the image is the first latent frame
    expected = torch.tensor(COLOR, dtype=torch.float32) / 127.5 - 1
    assert (a[0, :, 0].reshape(3, -1) - expected[:, None]).abs().max() < 1e-6  # PNG is lossless
    assert not torch.allclose(a[:, :, 1:4], b[:, :, 1:4], atol=1e-4)


@pytest.mark.parametrize("flag, content", [("--prefix-video", b"not a video at all"),
                                           ("--prefix-image", b"\x89PNG\r\n\x1a\n broken")])
def test_bad_prefix_files_exit_2_with_one_line(tmp_path, capsys, flag, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    assert main(["--output-dir", str(tmp_path / "out"), flag, str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(bad) in err and flag in err
    assert not (tmp_path / "out" / "latents.safetensors").exists()
    assert main(["--output-dir", str(tmp_path / "out"), flag, str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_prompt_schedule_and_prompt_at_are_recorded_with_their_cost(tmp_path):
    schedule = tmp_path / "schedule.jsonl"
    schedule.write_text('{"seconds": 0, "prompt": "a green field"}\n\n{"seconds": 1.5, "prompt": "snow falls"}\n')
    out, latents = generate(tmp_path, "s", "--seconds", "3", "--prompts", str(schedule),
                            "--prompt-at", "0.5=wind picks up")
    record = json.loads((out / "generation.json").read_text())
    assert record["prompts"]["first"] == "a green field"
    switches = record["prompts"]["switches"]
    assert [(s["prompt"], s["first_frame"], s["mode"]) for s in switches] == [
        ("wind picks up", 3, "recache"), ("snow falls", 6, "recache")]
    assert switches[0]["frames_recached"] == 3 and switches[1]["frames_recached"] == 6
    assert all(s["seconds"] > 0 for s in switches)
    assert record["summary"]["prompt_switch_seconds"] == pytest.approx(sum(s["seconds"] for s in switches))
    _, plain = generate(tmp_path, "plain", "--seconds", "3", "--prompt", "a green field")
    assert torch.equal(latents[:, :, :3], plain[:, :, :3]) and not torch.allclose(latents[:, :, 3:], plain[:, :, 3:])


@pytest.mark.parametrize("args, message", [
    (["--prompt-at", "soon=snow"], "--prompt-at"),
    (["--prompts", "{schedule}"], "line 2"),
    (["--compare-memory", "slow_fast,bogus"], "--compare-memory"),
    (["--prompt-switch", "keep", "--prefix-video", "a.mp4", "--prefix-image", "b.png"], "give one prefix"),
])
def test_bad_prompt_and_compare_arguments_exit_2(tmp_path, capsys, args, message):
    schedule = tmp_path / "schedule.jsonl"
    schedule.write_text('{"seconds": 1, "prompt": "ok"}\n{"seconds": -1, "prompt": "bad"}\n')
    args = [a.replace("{schedule}", str(schedule)) for a in args]
    assert main(["--output-dir", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_compare_memory_writes_each_policy_and_the_side_by_side_video(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["--output-dir", str(out), "--seconds", "3", "--compare-memory", "slow_fast,sink_local"]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["policies"] == ["slow_fast", "sink_local"]
    latents = {}
    for policy in report["policies"]:
        timings = report["per_policy"][policy]
        assert timings["wall_seconds"] > 0 and timings["num_chunks"] == 4 and timings["mean_chunk_seconds"] > 0
        record = json.loads((out / policy / "generation.json").read_text())
        assert record["config"]["memory"]["policy"] == policy and len(record["chunks"]) == 4
        latents[policy] = load_file(str(out / policy / "latents.safetensors"))["latents"]
    # the same noise: the first chunk (empty memory) is identical under both policies
    assert torch.equal(latents["slow_fast"][:, :, :3], latents["sink_local"][:, :, :3])
    with av.open(str(out / "compare.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(out / "slow_fast" / "video.mp4")) as container:
        single = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert len(frames) == 12
    assert frames[0].shape[0] == single.shape[0] and frames[0].shape[1] > 2 * single.shape[1]
    # the left half is the first policy's video
    assert np.abs(frames[0][:, :single.shape[1]].astype(int) - single.astype(int)).mean() < 3
    assert "sink_local" in capsys.readouterr().out
