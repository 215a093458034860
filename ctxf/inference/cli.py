"""`ctxf-generate`: stream a long video chunk by chunk with a chosen memory policy.

    ctxf-generate                                   # tiny default: 30 s, Slow-Fast Memory, CPU
    ctxf-generate --seconds 120 --memory full       # compare against an unbounded cache
    ctxf-generate --config wan1.3b --checkpoint <dir> codec.vae_path=<vae> text.encoder_path=<umt5>
    ctxf-generate --prefix-latents clip.safetensors # continue a given clip
    ctxf-generate --prefix-video clip.mp4           # continue a real video (or --prefix-image still.png)
    ctxf-generate --prompt-at "10=the square turns blue" --prompts schedule.jsonl
    ctxf-generate --compare-memory slow_fast,sink_local   # one video per policy + compare.mp4
    ctxf-generate --interactive                     # type prompts while it streams; Ctrl-D / Ctrl-C stops

Writes `video.mp4` (one per sample), `latents.safetensors` (prefix + generated) and
`generation.json` (settings, prompt switches, per-chunk timings and cache sizes) to the output
directory. Ctrl-C stops after the chunk in flight and still writes everything.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ctxf.config import DEFAULT_PRESET, MEMORY_POLICIES, PROMPT_SWITCH_MODES, Config, ConfigError, \
    describe_fields, load_config
from ctxf.inference.compare import compare_memory, parse_policies, policy_configs
from ctxf.inference.prompts import StdinPrompts, parse_prompt_at
from ctxf.inference.run import build_parts, generate, scheduled_prompts

FLAG_TO_KEY = {"seconds": "inference.seconds", "memory": "memory.policy", "prompt": "inference.prompt",
               "output_dir": "inference.output_dir", "prefix_latents": "inference.prefix_latents",
               "checkpoint": "inference.checkpoint", "seed": "inference.seed", "device": "inference.device",
               "batch_size": "inference.batch_size", "role": "inference.checkpoint_role",
               "prefix_video": "inference.prefix_video", "prefix_image": "inference.prefix_image",
               "prompts": "inference.prompt_schedule", "prompt_switch": "inference.prompt_switch"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ctxf-generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_PRESET, help="preset name or YAML path (default: tiny)")
    parser.add_argument("--seconds", type=float, help="seconds of video to generate")
    parser.add_argument("--memory", choices=MEMORY_POLICIES, help="memory policy of the KV cache")
    parser.add_argument("--prompt", help="text prompt")
    parser.add_argument("--output-dir", help="where to write video, latents and summary")
    parser.add_argument("--prefix-latents", help="latents to continue: .safetensors or .npy, [C,F,H,W] or [B,C,F,H,W]")
    parser.add_argument("--prefix-video", help="continue this video (decoded, resized and encoded as the data "
                                               "pipeline prepares clips)")
    parser.add_argument("--prefix-image", help="start from this image: it becomes the first latent frame")
    parser.add_argument("--prompts", metavar="SCHEDULE.jsonl",
                        help='prompt switches, one JSON a line: {"seconds": 12.5, "prompt": "..."}')
    parser.add_argument("--prompt-at", action="append", default=[], metavar="SECONDS=TEXT",
                        help="switch to TEXT at SECONDS of generated video (repeatable)")
    parser.add_argument("--prompt-switch", choices=PROMPT_SWITCH_MODES,
                        help="at a switch, recompute the memory under the new prompt (recache, default), keep it "
                             "or flush it")
    parser.add_argument("--compare-memory", metavar="POLICY,POLICY",
                        help="one video per memory policy from the same noise, plus a side-by-side compare.mp4")
    parser.add_argument("--interactive", action="store_true",
                        help="read prompts from standard input while streaming (a line switches now); the video "
                             "is written as it grows; stops at end of input or Ctrl-C (--seconds: at most)")
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


def run(cfg: Config, args: argparse.Namespace) -> dict:
    """Stream as the arguments ask; returns the summary to print."""
    prompt_at = [parse_prompt_at(value) for value in args.prompt_at]
    policies = policy_configs(cfg, parse_policies(args.compare_memory)) if args.compare_memory else None
    if args.interactive and (policies or prompt_at or cfg.inference.prompt_schedule):
        raise ConfigError("--interactive takes its prompts from standard input: drop --compare-memory, "
                          "--prompts and --prompt-at")
    schedule = scheduled_prompts(cfg, prompt_at)  # a bad schedule fails before the model is built
    parts = build_parts(cfg)
    num_frames = math.ceil(cfg.inference.seconds * cfg.video.latent_fps)
    if policies:
        report = compare_memory(policies, parts, prompt_at, num_frames)
        return {"compare": report, **next(iter(report["per_policy"].values()))}
    if args.interactive:
        print("interactive: type a prompt and press Enter to switch to it; end of input (Ctrl-D) or Ctrl-C stops",
              file=sys.stderr)
        limit = num_frames if args.seconds is not None else None
        return generate(cfg, parts, Path(cfg.inference.output_dir), StdinPrompts(), limit, growing=True).summary
    return generate(cfg, parts, Path(cfg.inference.output_dir), schedule, num_frames).summary


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
        summary = run(cfg, args)
    except ConfigError as err:
        print(f"ctxf-generate: config error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:  # bad paths, checkpoints or shapes from the user
        print(f"ctxf-generate: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while starting up, or twice while streaming (once stops cleanly)
        print("ctxf-generate: interrupted; a growing --interactive video keeps the chunks written so far", file=sys.stderr)
        return 130
    if "compare" in summary:
        print_comparison(summary["compare"])
        return 0
    print(f"wrote {', '.join(summary['videos'])}: {summary['latent_frames']} latent frames = "
          f"{summary['video_seconds']:.1f} s of video, plus latents and generation.json in {cfg.inference.output_dir}")
    print(f"speed: {summary['fps']:.1f} frames/s ({summary['realtime_factor']:.2f}x real time) on "
          f"{summary['device']}; peak memory {summary['peak_memory_bytes'] / 2**20:.0f} MB; "
          f"KV cache at the end {summary['final_cache_bytes'] / 2**20:.2f} MB ({cfg.memory.policy})")
    if summary["num_prompt_switches"]:
        print(f"prompt switches: {summary['num_prompt_switches']} ({cfg.inference.prompt_switch}), "
              f"{summary['prompt_switch_seconds'] * 1000:.1f} ms in all")
    if summary["stopped"] != "done":
        print(f"stopped early ({summary['stopped']}); everything generated until then is written")
    return 0


def print_comparison(report: dict) -> None:
    print(f"wrote {', '.join(report['videos'])} (left to right: {', '.join(report['policies'])})")
    print(f"{'policy':<14} {'s/chunk':>9} {'frames/s':>9} {'real time':>9} {'KV cache MB':>11}  video")
    for policy, row in report["per_policy"].items():
        print(f"{policy:<14} {row['mean_chunk_seconds']:>9.4f} {row['fps']:>9.1f} {row['realtime_factor']:>8.2f}x "
              f"{row['final_cache_bytes'] / 2**20:>11.2f}  {', '.join(row['videos'])}")


if __name__ == "__main__":
    sys.exit(main())
