"""Real videos + captions -> webdataset shards of latents and caption embeddings.

    python -m data_pipeline.videos_to_shards videos/ --out outputs/shards/mine \
        [--captions captions.jsonl] [--fps FPS] [--clip-seconds 20] [--min-seconds 5] [--resume] \
        [--config wan1.3b --vae-path WAN/vae --umt5-path WAN]

Inputs: video files and/or directories (searched recursively), or `--list FILE` with one path a
line. Captions: a sidecar `<video stem>.txt` next to each video, or `--captions` JSONL with one
`{"video": path-or-file-name, "caption": text}` object a line. Each video is decoded with PyAV,
resampled to `--fps`, scaled to cover `--height x --width` (default: the config's latent size x
codec stride) and centre-cropped, then cut into clips of `--clip-seconds`; a shorter last clip is
kept if it lasts `--min-seconds`. Frames become latents with the config's codec (the pixel codec
of the tiny preset, or Wan's VAE with `--vae-path`), captions become valid-token embeddings with
its text encoder (hashing, or umT5 with `--umt5-path`).

A video that fails to decode is reported and skipped (clips it completed before the failure are
kept and the report says how many); the run goes on, and the summary and manifest list it. So
are videos too short for `--min-seconds` and videos cut short (fewer seconds decode than the file
declares, as when a download stopped early), by file name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ctxf.data.format import META_EXT, encode_sample
from data_pipeline.cli_common import (
    add_common_arguments, format_duration, load_cli_config, print_summary, shard_settings,
)
from data_pipeline.clip_encoding import ClipEncoder
from data_pipeline.shards import (
    MANIFEST_NAME, AtomicShardWriter, OutputDirInUse, output_dir_in_use, prepare_output_dir, sample_members,
    write_manifest,
)
from data_pipeline.video_io import VideoFrames, encode_mp4, split_clips

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".gif"}


@dataclass
class VideoJob:
    path: Path
    caption: str | None


@dataclass
class ClipSettings:
    fps: float = 16.0
    height: int = 16
    width: int = 16
    clip_seconds: float = 20.0
    min_seconds: float = 5.0
    latent_dtype: str = "float32"
    text_dtype: str = "bfloat16"
    previews: int = 0
    caption_txt: bool = False

    @property
    def clip_frames(self) -> int:
        return max(1, round(self.clip_seconds * self.fps))

    @property
    def min_frames(self) -> int:
        return max(1, round(self.min_seconds * self.fps))


@dataclass
class RunReport:
    videos: int = 0
    videos_with_clips: int = 0
    clips: int = 0
    video_seconds: float = 0.0
    failed: list[dict] = field(default_factory=list)
    too_short: list[dict] = field(default_factory=list)  # video, decoded_seconds
    cut_short: list[dict] = field(default_factory=list)  # video, declared_seconds, decoded_seconds, clips
    no_caption: list[str] = field(default_factory=list)
    shards: list[dict] = field(default_factory=list)
    resumed_videos: int = 0  # videos wholly in the shards an interrupted run left, not decoded again


def find_videos(inputs: list[Path]) -> list[Path]:
    """Video files named directly or found under directories, sorted within each directory."""
    found = []
    for item in inputs:
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()))
        elif item.exists():
            found.append(item)
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    return found


def load_caption_index(path: Path) -> dict[str, str]:
    """JSONL captions keyed by the path as written, its resolved path and its file name."""
    index: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            video, caption = record["video"], record["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number}: expected {{\"video\": ..., \"caption\": ...}} ({err})") from err
        for key in (video, str((path.parent / video).resolve()), Path(video).name):
            index.setdefault(key, caption)
    return index


def caption_for(video: Path, index: dict[str, str] | None) -> str | None:
    if index is not None:
        for key in (str(video), str(video.resolve()), video.name):
            if key in index:
                return index[key]
        return None
    sidecar = video.with_suffix(".txt")
    return sidecar.read_text().strip() if sidecar.is_file() else None


def sample_key(video: Path, clip_index: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", video.stem)[:64] or "video"
    digest = hashlib.sha1(str(video.resolve()).encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}-{clip_index:04d}"


def write_video_clips(job: VideoJob, settings: ClipSettings, encoder: ClipEncoder, writer: AtomicShardWriter,
                      report: RunReport, done_keys: frozenset[str] = frozenset()) -> None:
    """Decode one video and write its clips (those not in `done_keys`); failures, videos too short
    and videos cut short go into the report and the log, never up."""
    clips_written = 0
    frames = VideoFrames(str(job.path), settings.fps, settings.height, settings.width)
    try:
        for clip in split_clips(frames, settings.fps, settings.clip_frames, settings.min_frames,
                                encoder.frame_multiple):
            num_video_frames = clip.frames.shape[0]
            clips_written += 1
            report.clips += 1
            report.video_seconds += num_video_frames / settings.fps
            key = sample_key(job.path, clip.index)
            if key in done_keys:  # written by the interrupted run this one resumes
                continue
            meta = {"caption": job.caption, "source": str(job.path), "fps": settings.fps,
                    "num_video_frames": num_video_frames, "height": settings.height, "width": settings.width,
                    "clip_index": clip.index, "start_seconds": clip.start_seconds, **encoder.codec_metadata()}
            preview = encode_mp4(clip.frames, settings.fps) if writer.num_samples < settings.previews else None
            writer.write(encode_sample(key, encoder.latents(clip.frames), encoder.text(job.caption), meta,
                                       latent_dtype=settings.latent_dtype, text_dtype=settings.text_dtype,
                                       caption=job.caption if settings.caption_txt else None, preview_mp4=preview))
    except Exception as err:  # PyAV, codec and file errors alike: report the video and go on
        report.failed.append({"video": str(job.path), "error": f"{type(err).__name__}: {err}",
                              "clips_written_before_error": clips_written})
        tqdm.write(f"failed: {job.path}: {type(err).__name__}: {err}")
        return
    if frames.cut_short:
        report.cut_short.append({"video": str(job.path), "declared_seconds": round(frames.declared_seconds, 3),
                                 "decoded_seconds": round(frames.decoded_seconds, 3), "clips": clips_written})
        tqdm.write(f"cut short: {job.path}: the file declares {frames.declared_seconds:.2f} s, only "
                   f"{frames.decoded_seconds:.2f} s decode ({clips_written} clips kept); is it truncated?")
    if clips_written:
        report.videos_with_clips += 1
    else:
        report.too_short.append({"video": str(job.path), "decoded_seconds": round(frames.decoded_seconds, 3)})
        tqdm.write(f"too short: {job.path}: {frames.decoded_seconds:.2f} s, --min-seconds is {settings.min_seconds:g}")


def videos_to_shards(jobs: list[VideoJob], out_dir: Path, encoder: ClipEncoder, settings: ClipSettings, *,
                     max_bytes: float = 256e6, max_samples: int = 1000, manifest_settings: dict | None = None,
                     overwrite: bool = False, resume: bool = False) -> RunReport:
    """Write all jobs' clips into `out_dir` with a manifest; returns what happened. With `resume`,
    the clips in the complete shards of an interrupted run are kept: videos wholly written are not
    decoded again, and the one it was writing is decoded but its written clips are not."""
    out_dir = Path(out_dir)
    kept = prepare_output_dir(out_dir, overwrite=overwrite, resume=resume)
    done_keys = frozenset(kept.keys)
    if kept.keys:
        _check_resumable(out_dir / kept.shards[0]["name"], kept.keys[0], settings, encoder)
    report = RunReport(videos=len(jobs))
    # Videos are written in order, so every video before the last one with a kept clip is complete.
    first_open = max((number for number, job in enumerate(jobs) if sample_key(job.path, 0) in done_keys),
                     default=0)
    with AtomicShardWriter(out_dir, max_bytes=max_bytes, max_samples=max_samples,
                           start_shard=kept.next_shard) as writer:
        progress = tqdm(jobs, desc="videos", unit="video")
        for number, job in enumerate(progress):
            if job.caption is None:
                report.no_caption.append(str(job.path))
                continue
            if number < first_open:
                report.resumed_videos += 1
                continue
            write_video_clips(job, settings, encoder, writer, report, done_keys)
            progress.set_postfix(clips=report.clips, failed=len(report.failed))
    report.shards = kept.shards + writer.shards
    skipped = report.failed + [{"video": v, "error": "no caption"} for v in report.no_caption] + \
        [{**v, "error": f"shorter than --min-seconds {settings.min_seconds:g}"} for v in report.too_short]
    extra = {"cut_short": report.cut_short}
    if resume:
        extra["resumed"] = {"kept_shards": len(kept.shards), "kept_samples": len(kept.keys),
                            "videos_not_decoded_again": report.resumed_videos,
                            "note": "skipped and cut_short list only the videos this run decoded"}
    write_manifest(out_dir, report.shards, created_by="data_pipeline.videos_to_shards",
                   settings={**(manifest_settings or {}), **settings.__dict__}, skipped=skipped, extra=extra)
    return report


def _check_resumable(shard: Path, key: str, settings: ClipSettings, encoder: ClipEncoder) -> None:
    """The kept clips were cut at these settings (read from a kept sample's metadata), or refuse."""
    meta = json.loads(sample_members(shard, key)[META_EXT])
    wanted = {"fps": settings.fps, "height": settings.height, "width": settings.width, **encoder.codec_metadata()}
    differing = {name: (meta.get(name), value) for name, value in wanted.items() if meta.get(name) != value}
    if differing:
        described = ", ".join(f"{name} {old!r} there, {new!r} now" for name, (old, new) in differing.items())
        raise OutputDirInUse(f"{shard.parent} holds clips made with other settings ({described}); resume with the "
                             f"arguments of the interrupted run, or pass --overwrite")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.videos_to_shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", type=Path, help="video files or directories")
    parser.add_argument("--list", type=Path, help="text file with one video path a line")
    parser.add_argument("--captions", type=Path,
                        help="JSONL of {\"video\": ..., \"caption\": ...} (default: sidecar .txt files)")
    clips = parser.add_argument_group("clips")
    clips.add_argument("--fps", type=float,
                       help="target frames per second (default: video.video_fps of the config, 4 for tiny)")
    clips.add_argument("--height", type=int, help="frame height (default: video.latent_height x codec stride)")
    clips.add_argument("--width", type=int, help="frame width (default: video.latent_width x codec stride)")
    clips.add_argument("--clip-seconds", type=float, default=20.0,
                       help="clip length; longer videos are split (default 20)")
    clips.add_argument("--min-seconds", type=float, default=5.0, help="drop clips shorter than this (default 5)")
    clips.add_argument("--vae-path", help="encode with Wan's VAE from this local diffusers directory")
    clips.add_argument("--umt5-path", help="embed captions with umT5 from this local directory")
    clips.add_argument("--device", default="cpu", help="device for the VAE and text encoder (default cpu)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)

    if args.vae_path:
        args.overrides += ["codec.kind=wan_vae", f"codec.vae_path={args.vae_path}"]
    if args.umt5_path:
        args.overrides += ["text.kind=umt5", f"text.encoder_path={args.umt5_path}"]
    inputs = list(args.inputs)
    if args.list:
        inputs += [Path(line.strip()) for line in args.list.read_text().splitlines() if line.strip()]
    if not inputs:
        parser.error("name video files or directories, or pass --list FILE")
    if (args.fps is not None and args.fps <= 0) or args.clip_seconds <= 0 or args.min_seconds < 0:
        parser.error("--fps and --clip-seconds must be positive, --min-seconds >= 0")
    try:
        videos = find_videos(inputs)
        caption_index = load_caption_index(args.captions) if args.captions else None
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if not videos:
        parser.error(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) found in {[str(i) for i in inputs]}")

    in_use = output_dir_in_use(Path(args.out))
    if in_use and not (args.overwrite or args.resume):
        parser.error(in_use)
    cfg = load_cli_config(args)
    fps = args.fps or float(cfg.video.video_fps)
    encoder = ClipEncoder(cfg, device=args.device)
    height = args.height or cfg.video.latent_height * encoder.spatial_stride
    width = args.width or cfg.video.latent_width * encoder.spatial_stride
    if height % encoder.spatial_stride or width % encoder.spatial_stride:
        parser.error(f"--height {height} and --width {width} must be multiples of the codec stride "
                     f"{encoder.spatial_stride}")
    settings = ClipSettings(fps=fps, height=height, width=width, clip_seconds=args.clip_seconds,
                            min_seconds=args.min_seconds, latent_dtype=args.latent_dtype, text_dtype=args.text_dtype,
                            previews=args.previews, caption_txt=args.captions_txt)
    jobs = [VideoJob(path=v, caption=caption_for(v, caption_index)) for v in videos]
    started = time.perf_counter()
    try:
        report = videos_to_shards(jobs, Path(args.out), encoder, settings, max_bytes=args.max_shard_mb * 1e6,
                                  max_samples=args.max_shard_samples, manifest_settings=shard_settings(args),
                                  overwrite=args.overwrite, resume=args.resume)
    except OutputDirInUse as err:
        parser.error(str(err))
    num_bytes = sum(s["num_bytes"] for s in report.shards)
    num_samples = sum(s["num_samples"] for s in report.shards)
    resumed = f", {report.resumed_videos} already written by the interrupted run" if args.resume else ""
    rows = [("videos", f"{report.videos} found, {report.videos_with_clips} gave clips{resumed}"),
            ("failed to decode", len(report.failed)), ("too short", len(report.too_short)),
            ("cut short", len(report.cut_short)), ("without caption", len(report.no_caption)),
            ("clips", f"{num_samples} ({format_duration(report.video_seconds)} decoded in this run at "
                      f"{settings.fps:g} fps, {settings.height}x{settings.width})"),
            ("shards", f"{len(report.shards)}, {num_bytes / 1e6:.1f} MB -> {Path(args.out) / 'manifest.json'}"),
            ("time", f"{time.perf_counter() - started:.1f} s")]
    if cfg.video.video_fps != settings.fps:
        rows.append(("note", f"--fps {settings.fps:g} differs from video.video_fps={cfg.video.video_fps} of the "
                             f"config; train with a config whose video_fps matches the shards"))
    print_summary("videos written to shards", rows)
    for failure in report.failed[:10]:
        print(f"  failed: {failure['video']}: {failure['error']}")
    for short in report.too_short[:10]:
        print(f"  too short: {short['video']}: {short['decoded_seconds']:g} s < --min-seconds {settings.min_seconds:g}")
    for cut in report.cut_short[:10]:
        print(f"  cut short: {cut['video']}: {cut['decoded_seconds']:g} of {cut['declared_seconds']:g} s decoded")
    if len(report.failed) > 10 or len(report.too_short) > 10 or len(report.cut_short) > 10:
        print(f"  (every one is listed in {Path(args.out) / MANIFEST_NAME})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
