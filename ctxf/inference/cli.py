"""`ctxf-generate`: stream a long video chunk by chunk with a chosen memory policy.

    ctxf-generate                                   # tiny default: 30 s, Slow-Fast Memory, CPU
    ctxf-generate --seconds 120 --memory full       # compare against an unbounded cache
    ctxf-generate --config wan1.3b --checkpoint <dir> codec.vae_path=<vae> text.encoder_path=<umt5>
    ctxf-generate --prefix-latents clip.safetensors # continue a given clip

Writes `video.mp4` (one per sample), `latents.safetensors` (prefix + generated) and
`generation.json` (settings, per-chunk timings and cache sizes) to the output directory.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ctxf.config import DEFAULT_PRESET, MEMORY_POLICIES, Config, ConfigError, describe_fields, load_config
from ctxf.inference.generator import StreamingGenerator
from ctxf.inference.video_writer import display_scale, write_mp4
from ctxf.memory.cache import build_memory
from ctxf.models.codec import build_codec, video_to_uint8
from ctxf.models.factory import build_model, resolve_device
from ctxf.models.text_encoder import build_text_encoder
from ctxf.tensor_files import load_tensor

FLAG_TO_KEY = {"seconds": "inference.seconds", "memory": "memory.policy", "prompt": "inference.prompt",
               "output_dir": "inference.output_dir", "prefix_latents": "inference.prefix_latents",
               "checkpoint": "inference.checkpoint", "seed": "inference.seed", "device": "inference.device",
               "batch_size": "inference.batch_size", "role": "inference.checkpoint_role"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ctxf-generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_PRESET, help="preset name or YAML path (default: tiny)")
    parser.add_argument("--seconds", type=float, help="seconds of video to generate")
    parser.add_argument("--memory", choices=MEMORY_POLICIES, help="memory policy of the KV cache")
    parser.add_argument("--prompt", help="text prompt")
    parser.add_argument("--output-dir", help="where to write video, latents and summary")
    parser.add_argument("--prefix-latents", help="latents to continue: .safetensors or .npy, [C,F,H,W] or [B,C,F,H,W]")
    parser.add_argument("--checkpoint", help="weights: diffusers directory, Wan original file, or a training step "
                                             "or run directory")
    parser.add_argument("--role", help="with a training checkpoint: student, teacher or critic (+ _ema)")
    parser.add_argument("--seed", type=int, help="noise seed")
    parser.add_argument("--device", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, help="videos generated side by side")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its help and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="any other config value")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in FLAG_TO_KEY.items()
                 if getattr(args, flag) is not None]
    return load_config(args.config, list(args.overrides) + overrides)


def load_latents(path: str) -> torch.Tensor:
    """A latent clip (`latents` in a .safetensors, or a .npy) as [B, C, F, H, W]."""
    latents = load_tensor(path, "latents", what="prefix latents")
    if latents.ndim == 4:
        latents = latents[None]
    if latents.ndim != 5:
        raise ValueError(f"prefix latents {path} have shape {tuple(latents.shape)}; expected [C,F,H,W] or [B,C,F,H,W]")
    return latents.float()


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(cfg: Config) -> dict:
    inf = cfg.inference
    device = resolve_device(inf.device)
    # codec and text encoder first: a missing path fails before a large model is allocated
    codec = build_codec(cfg.codec, device)
    text = build_text_encoder(cfg.text, cfg.model.text_dim, device).encode([inf.prompt] * inf.batch_size)
    model = build_model(cfg.model, device, checkpoint=inf.checkpoint, seed=inf.seed,
                        checkpoint_key=inf.checkpoint_role or None)
    if not inf.checkpoint:
        print("note: no --checkpoint given, so the student has random weights (the tiny default's job is to "
              "exercise streaming, memory and video output, not to draw anything)", file=sys.stderr)
    param = next(model.parameters())
    text = text.to(device=device, dtype=param.dtype)
    generator = StreamingGenerator(model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    latent_shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)

    prefix = torch.empty(inf.batch_size, *latent_shape[:1], 0, *latent_shape[1:])
    if inf.prefix_latents:
        prefix = load_latents(inf.prefix_latents)
        if tuple(prefix.shape[1:2] + prefix.shape[3:]) != latent_shape:
            raise ValueError(f"prefix latents have [C, H, W] = {tuple(prefix.shape[1:2] + prefix.shape[3:])}, "
                             f"the model expects {latent_shape}")
        prefix = prefix.expand(inf.batch_size, -1, -1, -1, -1) if prefix.shape[0] == 1 else prefix
        generator.prefill(prefix.to(device=device, dtype=param.dtype), text)

    num_frames = math.ceil(inf.seconds * cfg.video.latent_fps)
    num_chunks = math.ceil(num_frames / cfg.video.num_frames_per_block)
    chunks, started = [], time.perf_counter()
    with tqdm(total=num_chunks, unit="chunk", desc=f"generating ({cfg.memory.policy})") as bar:
        for chunk in generator.stream(num_frames, text, latent_shape, seed=inf.seed):
            chunks.append(chunk.float().cpu())
            elapsed = time.perf_counter() - started
            bar.set_postfix(fps=f"{codec.num_video_frames(sum(c.shape[2] for c in chunks)) / elapsed:.1f}",
                            cache=f"{generator.memory.cache_bytes() / 2**20:.2f}MB")
            bar.update(1)
    elapsed = time.perf_counter() - started
    generated = torch.cat(chunks, dim=2)
    video_frames = codec.num_video_frames(num_frames)
    return write_outputs(cfg, generator, codec, prefix.cpu(), generated, {
        "latent_frames": num_frames, "video_frames": video_frames, "video_seconds": video_frames / cfg.video.video_fps,
        "wall_seconds": elapsed, "fps": video_frames / elapsed, "realtime_factor":
        (video_frames / cfg.video.video_fps) / elapsed, "peak_memory_bytes": peak_memory_bytes(device),
        "final_cache_bytes": generator.memory.cache_bytes(), "device": str(device)})


def write_outputs(cfg: Config, generator: StreamingGenerator, codec, prefix: torch.Tensor,
                  generated: torch.Tensor, summary: dict) -> dict:
    out_dir = Path(cfg.inference.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    latents = torch.cat([prefix.float(), generated], dim=2)
    save_file({"latents": latents.contiguous()}, str(out_dir / "latents.safetensors"))
    frames = video_to_uint8(codec.decode(latents))
    scale = display_scale(frames.shape[2], frames.shape[3])
    videos = []
    for sample, sample_frames in enumerate(frames):
        name = "video.mp4" if len(frames) == 1 else f"video_{sample}.mp4"
        videos.append(str(write_mp4(sample_frames, out_dir / name, cfg.video.video_fps, scale)))
    summary = {**summary, "videos": videos, "latents": str(out_dir / "latents.safetensors"),
               "num_prefix_frames": prefix.shape[2]}
    record = {"summary": summary, "config": cfg.to_dict(), "chunks": [asdict(s) for s in generator.stats]}
    (out_dir / "generation.json").write_text(json.dumps(record, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"ctxf-generate: config error: {err}", file=sys.stderr)
        return 2
    if args.help_config:
        print(describe_fields(cfg))
        return 0
    try:
        summary = run(cfg)
    except (ValueError, FileNotFoundError) as err:  # bad paths, checkpoints or shapes from the user
        print(f"ctxf-generate: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(summary['videos'])}: {summary['latent_frames']} latent frames = "
          f"{summary['video_seconds']:.1f} s of video, plus latents and generation.json in {cfg.inference.output_dir}")
    print(f"speed: {summary['fps']:.1f} frames/s ({summary['realtime_factor']:.2f}x real time) on "
          f"{summary['device']}; peak memory {summary['peak_memory_bytes'] / 2**20:.0f} MB; "
          f"KV cache at the end {summary['final_cache_bytes'] / 2**20:.2f} MB ({cfg.memory.policy})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
