"""Acceptance 6: a real video made here with PyAV goes decode -> resample -> shard -> loader.

The oracle is the motion itself: a white square crosses the source frames at a known speed, so
where it must be in each 16 fps output frame follows from the timestamps alone.
"""

import json
from pathlib import Path

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


def write_square_mkv(path, seconds):
    """A Matroska file with a keyframe every half second: cut anywhere, it still opens and decodes."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=SOURCE_FPS, options={"crf": "8", "g": str(SOURCE_FPS // 2)})
        stream.width, stream.height, stream.pix_fmt = SOURCE_WIDTH, SOURCE_HEIGHT, "yuv420p"
        for index in range(round(seconds * SOURCE_FPS)):
            image = np.full((SOURCE_HEIGHT, SOURCE_WIDTH, 3), 30, np.uint8)
            left = index % (SOURCE_WIDTH - SQUARE)
            image[24:24 + SQUARE, left:left + SQUARE] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_videos_cut_short_or_too_short_are_named_in_the_log_and_manifest(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_square_mkv(videos / "whole.mkv", seconds=4)
    write_square_mkv(videos / "cut.mkv", seconds=4)
    data = (videos / "cut.mkv").read_bytes()
    (videos / "cut.mkv").write_bytes(data[: len(data) // 2])  # a download that stopped half way
    write_moving_square(videos / "blink.mp4", seconds=0.5)
    for name in ("whole", "cut", "blink"):
        (videos / f"{name}.txt").write_text(f"caption of {name}")
    out = tmp_path / "shards"
    assert videos_to_shards.main([str(videos), "--out", str(out), "--clip-seconds", "1", "--min-seconds", "1"]) == 0
    printed = capsys.readouterr()
    log = printed.out + printed.err
    assert "cut short" in log and "cut.mkv" in log and "whole.mkv" not in log.replace(str(out), "")
    assert "too short" in log and "blink.mp4" in log
    assert "note" not in printed.out  # the default --fps is the config's video_fps
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(c["video"]).name for c in manifest["cut_short"]] == ["cut.mkv"]
    cut = manifest["cut_short"][0]
    assert cut["declared_seconds"] == pytest.approx(4.0, abs=0.1) and cut["decoded_seconds"] < 3.0
    assert [Path(s["video"]).name for s in manifest["skipped"]] == ["blink.mp4"]
    assert manifest["settings"]["fps"] == load_config("tiny").video.video_fps


def test_an_interrupted_video_run_resumes_to_the_same_shards(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for number in range(3):
        write_square_mkv(videos / f"video{number}.mkv", seconds=2 + number)
    jobs = [videos_to_shards.VideoJob(path, caption=path.stem) for path in sorted(videos.iterdir())]
    settings = videos_to_shards.ClipSettings(fps=4, height=16, width=16, clip_seconds=1, min_seconds=1)
    encoder = ClipEncoder(load_config("tiny"))
    run = dict(max_samples=2, manifest_settings={})
    videos_to_shards.videos_to_shards(jobs, tmp_path / "fresh", encoder, settings, **run)
    fresh = json.loads((tmp_path / "fresh" / "manifest.json").read_text())
    assert fresh["num_samples"] == 9 and fresh["num_shards"] == 5

    cut = tmp_path / "cut"
    videos_to_shards.videos_to_shards(jobs, cut, encoder, settings, **run)
    (cut / "manifest.json").unlink()  # killed in shard 3; shard 2 holds video 2's first clip
    for name in ("shard-000003.tar", "shard-000004.tar"):
        (cut / name).unlink()
    (cut / "shard-000003.tar.partial").write_bytes(b"half a tar")
    with pytest.raises(ValueError, match="--resume"):
        videos_to_shards.videos_to_shards(jobs, cut, encoder, settings, **run)
    other_fps = videos_to_shards.ClipSettings(fps=8, height=16, width=16, clip_seconds=1, min_seconds=1)
    with pytest.raises(ValueError, match=r"other settings \(fps 4(\.0)? there, 8 now"):
        videos_to_shards.videos_to_shards(jobs, cut, encoder, other_fps, resume=True, **run)
    report = videos_to_shards.videos_to_shards(jobs, cut, encoder, settings, resume=True, **run)
    resumed = json.loads((cut / "manifest.json").read_text())
    assert resumed["shards"] == fresh["shards"]
    assert report.resumed_videos == 2 and resumed["resumed"]["kept_samples"] == 6
    assert report.clips == 4  # video 2 decoded again; its first clip, already kept, not written twice
