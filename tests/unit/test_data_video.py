"""Acceptance 6: a real video made here with PyAV goes decode -> resample -> shard -> loader.

The oracle is the motion itself: a white square crosses the source frames at a known speed, so
where it must be in each 16 fps output frame follows from the timestamps alone.
"""

import json

import av
import numpy as np
import pytest

from ctxf.config import load_config
from ctxf.data.loader import ShardLoader
from ctxf.models.codec import PixelCodec, video_to_uint8
from data_pipeline import videos_to_shards
from data_pipeline.clip_encoding import ClipEncoder
from data_pipeline.video_io import resample_times, split_clips

SOURCE_FPS, SECONDS, SOURCE_WIDTH, SOURCE_HEIGHT, SQUARE = 24, 3.0, 96, 64, 16


def square_left(source_index):
    """Left edge of the square in source frame `source_index` (moves 24 px a second)."""
    return round(source_index * 24 / SOURCE_FPS)


def write_moving_square(path, seconds=SECONDS):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=SOURCE_FPS, options={"crf": "8"})
        stream.width, stream.height, stream.pix_fmt = SOURCE_WIDTH, SOURCE_HEIGHT, "yuv420p"
        for index in range(round(seconds * SOURCE_FPS)):
            image = np.full((SOURCE_HEIGHT, SOURCE_WIDTH, 3), 30, np.uint8)
            left = square_left(index)
            image[24:24 + SQUARE, left:left + SQUARE] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_moving_square(root / "square.mp4")
    (root / "square.txt").write_text("a white square slides to the right\n")
    write_moving_square(root / "blink.mp4", seconds=0.5)
    (root / "blink.txt").write_text("too short to keep")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    (root / "broken.txt").write_text("never decodes")
    write_moving_square(root / "silent.mp4", seconds=1.5)  # no caption anywhere
    return root


def test_a_video_goes_through_decode_resample_shard_and_loader(video_dir, tmp_path, capsys):
    out = tmp_path / "shards"
    status = videos_to_shards.main([str(video_dir), "--out", str(out), "--fps", "16", "--height", "32",
                                    "--width", "32", "--clip-seconds", "2", "--min-seconds", "1", "--previews", "1"])
    assert status == 0
    summary = capsys.readouterr().out
    for line in ("4 found, 1 gave clips", "failed to decode  1", "too short         1", "without caption   1"):
        assert line in summary

    loader = ShardLoader(str(out / "manifest.json"), batch_size=1, max_length=16, shuffle_buffer=0)
    batches = list(loader)
    assert [b.meta[0]["num_frames"] for b in batches] == [32, 16]  # 3 s at 16 fps, cut at 2 s
    assert [b.meta[0]["start_seconds"] for b in batches] == [0.0, 2.0]
    assert batches[0].meta[0]["caption"] == "a white square slides to the right"
    frames = np.concatenate([video_to_uint8(PixelCodec(2).decode(b.latents))[0].numpy() for b in batches])
    assert frames.shape == (48, 32, 32, 3)
    checked = 0
    for k, frame in enumerate(frames):
        shown = int(k * SOURCE_FPS / 16)  # the source frame on screen at t = k / 16 s
        # scaled by 1/2 to 48x32, then 8 columns cropped from each side
        expected_centre = (square_left(shown) + SQUARE / 2) / 2 - 8
        columns = np.nonzero(frame.mean(axis=2).max(axis=0) > 140)[0]
        if 4 <= expected_centre <= 28:  # the whole (8 px wide) square is inside the crop
            checked += 1
            assert abs((columns.min() + columns.max() + 1) / 2 - expected_centre) <= 1.0, k
    assert checked >= 30


def test_failures_are_listed_in_the_manifest(video_dir, tmp_path):
    jobs = [videos_to_shards.VideoJob(video_dir / name, caption="c") for name in ("broken.mp4", "square.mp4")]
    settings = videos_to_shards.ClipSettings(fps=4, height=16, width=16, clip_seconds=10, min_seconds=1)
    report = videos_to_shards.videos_to_shards(jobs, tmp_path, ClipEncoder(load_config("tiny")), settings)
    assert report.clips == 1 and len(report.failed) == 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["num_samples"] == 1
    assert manifest["skipped"][0]["video"].endswith("broken.mp4")


def test_resampling_follows_timestamps():
    def picks(times, fps):
        return list(resample_times(((t, i) for i, t in enumerate(times)), fps))

    assert picks([i / 10 for i in range(10)], 4) == [0, 2, 5, 7]      # down: 10 -> 4 fps
    assert picks([0.0, 0.5], 4) == [0, 0, 1, 1]                         # up: 2 -> 4 fps
    assert picks([0.0, 0.1, 0.7], 4) == [0, 1, 1, 2, 2]                 # variable rate
    assert picks([], 4) == []


def test_clips_are_cut_and_trimmed_to_the_codec_frame_rule():
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(23)]
    clips = list(split_clips(frames, fps=4, clip_frames=10, min_frames=2, frame_multiple=(4, 1)))
    assert [len(c.frames) for c in clips] == [9, 9]  # 4k+1 each; the last 3 frames trim to 1 < min_frames
    assert [c.start_seconds for c in clips] == [0.0, 2.5]
    assert clips[1].frames[0, 0, 0, 0] == 10
    plain = list(split_clips(frames, fps=4, clip_frames=10, min_frames=3))
    assert [len(c.frames) for c in plain] == [10, 10, 3] and plain[2].frames[-1, 0, 0, 0] == 22
