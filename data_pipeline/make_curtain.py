"""Write the synthetic curtain world (docs/benchmarks.md, the curtain world) as train and held-out shards.

    python -m data_pipeline.make_curtain --out outputs/curtain --train-clips 512 --heldout-clips 64

Writes `<out>/train/` and `<out>/heldout/`, each with `shard-NNNNNN.tar` and `manifest.json`.
Frames are `frame_size` pixels square, where frame_size = video.latent_height x codec.pixel_patch
of the config (16 for the tiny preset); latents come from the pixel codec, captions are embedded
with the config's text encoder (the hashing encoder for tiny). Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from ctxf.data.format import LATENTS_EXT, META_EXT, TEXT_EXT, encode_sample
from data_pipeline.cli_common import add_common_arguments, load_cli_config, print_summary, shard_settings
from data_pipeline.clip_encoding import ClipEncoder
from data_pipeline.curtain import LATENT_FRAME_SECONDS, CurtainSpec, make_clip
from data_pipeline.shards import (
    MANIFEST_NAME, AtomicShardWriter, OutputDirInUse, output_dir_in_use, prepare_output_dir, sample_members,
    write_manifest,
)
from data_pipeline.video_io import encode_mp4


def curtain_sample(spec: CurtainSpec, seed: int, split: str, index: int, encoder: ClipEncoder, *,
                   latent_dtype: str = "float32", text_dtype: str = "bfloat16", preview: bool = False,
                   caption_txt: bool = False) -> dict:
    """One curtain clip as a shard sample (see `ctxf.data.format`)."""
    clip = make_clip(spec, seed, split, index)
    truth = clip.truth
    fps = 1.0 / LATENT_FRAME_SECONDS
    meta = {"caption": truth.caption, "source": "curtain", "fps": fps, "num_video_frames": truth.num_frames,
            "height": spec.frame_size, "width": spec.frame_size, "seed": seed, **encoder.codec_metadata(),
            "curtain": truth.to_json()}
    return encode_sample(curtain_key(split, index), encoder.latents(clip.frames), encoder.text(truth.caption),
                         meta, latent_dtype=latent_dtype, text_dtype=text_dtype,
                         caption=truth.caption if caption_txt else None,
                         preview_mp4=encode_mp4(clip.frames, fps, scale=max(1, 128 // spec.frame_size))
                         if preview else None)


def write_split(spec: CurtainSpec, seed: int, split: str, count: int, out_dir: Path, encoder: ClipEncoder, *,
                max_bytes: float = 256e6, max_samples: int = 1000, latent_dtype: str = "float32",
                text_dtype: str = "bfloat16", previews: int = 0, caption_txt: bool = False,
                settings: dict | None = None, overwrite: bool = False, resume: bool = False) -> dict:
    """Clips 0..count-1 of `split` into `out_dir`; returns the manifest's content. With `resume`,
    the clips in the complete shards of an interrupted run are kept and the rest written."""
    out_dir = Path(out_dir)
    kept = prepare_output_dir(out_dir, overwrite=overwrite, resume=resume)
    expected_keys = [curtain_key(split, index) for index in range(len(kept.keys))]
    if kept.keys != expected_keys or len(kept.keys) > count:
        raise OutputDirInUse(f"{out_dir} holds other clips than the first {count} of split {split!r} "
                             f"({kept.keys[:1]}, ...); resume with the arguments of the interrupted run, or pass "
                             f"--overwrite")
    if kept.keys:  # the last kept clip, made again with these arguments, must be the stored one byte for byte
        last = len(kept.keys) - 1
        again = curtain_sample(spec, seed, split, last, encoder, latent_dtype=latent_dtype, text_dtype=text_dtype)
        stored = sample_members(out_dir / kept.shards[-1]["name"], curtain_key(split, last))
        if any(stored.get(ext) != again[ext] for ext in (LATENTS_EXT, TEXT_EXT, META_EXT)):
            raise OutputDirInUse(f"{out_dir} holds clips made with other settings (seed, world, config or dtypes) "
                                 f"than these; resume with the arguments of the interrupted run, or pass --overwrite")
    with AtomicShardWriter(out_dir, max_bytes=max_bytes, max_samples=max_samples,
                           start_shard=kept.next_shard) as writer:
        for index in tqdm(range(len(kept.keys), count), desc=f"curtain {split}", unit="clip",
                          initial=len(kept.keys), total=count):
            writer.write(curtain_sample(spec, seed, split, index, encoder, latent_dtype=latent_dtype,
                                        text_dtype=text_dtype, preview=index < previews, caption_txt=caption_txt))
    shards = kept.shards + writer.shards
    settings = {**(settings or {}), "split": split, "seed": seed, "num_clips": count, "world": asdict(spec)}
    write_manifest(out_dir, shards, created_by="data_pipeline.make_curtain", settings=settings,
                   extra={"resumed_with_samples": len(kept.keys)} if resume else None)
    return {"shards": shards, "num_samples": sum(shard["num_samples"] for shard in shards),
            "resumed_with_samples": len(kept.keys)}


def curtain_key(split: str, index: int) -> str:
    return f"curtain-{split}-{index:06d}"


def spec_from_args(args: argparse.Namespace, frame_size: int) -> CurtainSpec:
    fields = dict(frame_size=frame_size, num_shapes=args.num_shapes, gap_range=(args.min_gap, args.max_gap),
                  caption_mode=args.caption_mode)
    return CurtainSpec(**fields, num_frames=args.num_frames) if args.num_frames else CurtainSpec.fitted(**fields)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.make_curtain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    world = parser.add_argument_group("world")
    world.add_argument("--train-clips", type=int, default=512, help="training clips (default 512)")
    world.add_argument("--heldout-clips", type=int, default=64, help="held-out clips (default 64)")
    world.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    world.add_argument("--min-gap", type=int, default=1, help="shortest curtain gap in latent frames (default 1)")
    world.add_argument("--max-gap", type=int, default=120, help="longest gap in latent frames (default 120 = 30 s)")
    world.add_argument("--num-frames", type=int, default=0,
                       help="latent frames per clip (default: just enough for the longest gap)")
    world.add_argument("--num-shapes", type=int, default=3, help="shapes in the library, 1-3 (default 3)")
    world.add_argument("--caption-mode", choices=["fixed", "descriptive"], default="fixed",
                       help="fixed: one caption for all clips (default; text reveals nothing); descriptive: names "
                            "colour, shape and background")
    add_common_arguments(parser)
    args = parser.parse_args(argv)

    cfg = load_cli_config(args)
    if cfg.codec.kind != "pixel" or cfg.video.latent_height != cfg.video.latent_width:
        parser.error(f"the curtain world needs the pixel codec and square latents; config {args.config} has "
                     f"codec.kind={cfg.codec.kind}, latents {cfg.video.latent_height}x{cfg.video.latent_width}")
    if args.train_clips < 0 or args.heldout_clips < 0:
        parser.error("--train-clips and --heldout-clips must be >= 0")
    try:
        spec = spec_from_args(args, frame_size=cfg.video.latent_height * cfg.codec.pixel_patch)
    except ValueError as err:
        parser.error(str(err))
    encoder = ClipEncoder(cfg)
    started = time.perf_counter()
    results = {}
    for split in ("train", "heldout"):
        in_use = output_dir_in_use(Path(args.out) / split)
        if in_use and not (args.overwrite or args.resume):
            parser.error(in_use)
    for split, count in (("train", args.train_clips), ("heldout", args.heldout_clips)):
        try:
            results[split] = write_split(spec, args.seed, split, count, Path(args.out) / split, encoder,
                                         max_bytes=args.max_shard_mb * 1e6, max_samples=args.max_shard_samples,
                                         latent_dtype=args.latent_dtype, text_dtype=args.text_dtype,
                                         previews=args.previews, caption_txt=args.captions_txt,
                                         settings=shard_settings(args), overwrite=args.overwrite,
                                         resume=args.resume)
        except OutputDirInUse as err:
            parser.error(str(err))
    rows = [("world", f"{spec.frame_size}x{spec.frame_size} frames, {spec.num_frames} latent frames per clip, "
                      f"{spec.num_identities} identities x {spec.num_backgrounds} backgrounds, gaps "
                      f"{spec.gap_range[0]}-{spec.gap_range[1]} frames")]
    for split, result in results.items():
        num_bytes = sum(s["num_bytes"] for s in result["shards"])
        resumed = f" ({result['resumed_with_samples']} kept from the interrupted run)" if args.resume else ""
        rows.append((split, f"{result['num_samples']} clips{resumed} in {len(result['shards'])} shards, "
                            f"{num_bytes / 1e6:.1f} MB -> {Path(args.out) / split / MANIFEST_NAME}"))
    rows.append(("time", f"{time.perf_counter() - started:.1f} s"))
    print_summary("curtain world written", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
