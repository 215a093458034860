"""Memory boundedness and streaming speed (docs/benchmarks.md).

Generates a long video (default 480 latent frames = 2 minutes) with the tiny model and records,
per chunk, wall seconds and KV-cache bytes for:
- Slow-Fast Memory (bounded),
- full history (unbounded KV cache),
- naive recompute: no cache, every denoising step re-runs the whole clean history plus the
  noisy chunk bidirectionally (how a plain bidirectional model would continue a video).
Prints ratios measured side by side in this run and writes JSON and a PNG plot.

    python benchmarks/bench_streaming.py [--frames 480] [--naive-seconds 10 30 60] [--out outputs/bench]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ctxf.config import load_config
from ctxf.inference.generator import StreamingGenerator
from ctxf.memory.cache import build_memory
from ctxf.models.flow_matching import add_noise, predict_x0, sampling_timesteps
from ctxf.models.wan import WanDiT

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks directory is not a package
from bench_report import pyplot, write_report  # noqa: E402


def streaming_run(cfg, model, text, num_frames: int) -> dict:
    generator = StreamingGenerator(model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
    chunks = generator.stream(num_frames, text, shape, seed=0)
    for _ in tqdm(chunks, total=-(-num_frames // cfg.video.num_frames_per_block), desc=cfg.memory.policy,
                  unit="chunk", leave=False):
        pass
    return {"end_frame": [s.first_frame + s.num_frames for s in generator.stats],
            "seconds": [s.seconds for s in generator.stats],
            "cache_bytes": [s.cache_bytes for s in generator.stats],
            "keys_attended": [(s.num_cached_frames + s.num_frames) * cfg.frame_seq_len for s in generator.stats]}


@torch.no_grad()
def naive_recompute_run(cfg, model, text, num_frames: int) -> dict:
    """No cache: each step attends over [clean history | noisy chunk] recomputed from scratch."""
    block, total = cfg.video.num_frames_per_block, float(cfg.diffusion.num_train_timesteps)
    timesteps = sampling_timesteps(cfg.diffusion)
    generator = torch.Generator().manual_seed(0)
    shape = (1, cfg.model.in_channels, block, cfg.video.latent_height, cfg.video.latent_width)
    history = torch.empty(1, cfg.model.in_channels, 0, cfg.video.latent_height, cfg.video.latent_width)
    record = {"end_frame": [], "seconds": []}
    for _ in tqdm(range(-(-num_frames // block)), desc="naive recompute", unit="chunk", leave=False):
        started = time.perf_counter()
        x = torch.randn(shape, generator=generator)
        for step, t in enumerate(timesteps):
            frames = history.shape[2] + block
            per_frame_t = torch.zeros(1, frames)
            per_frame_t[:, history.shape[2]:] = t
            velocity = model(torch.cat([history, x], dim=2), per_frame_t, text)[:, :, -block:]
            x0 = predict_x0(x, velocity, torch.tensor([t / total]))
            if step + 1 < len(timesteps):
                x = add_noise(x0, torch.randn(shape, generator=generator), torch.tensor([timesteps[step + 1] / total]))
        history = torch.cat([history, x0], dim=2)
        record["end_frame"].append(history.shape[2])
        record["seconds"].append(time.perf_counter() - started)
    return record


def seconds_to_reach(run: dict, frame: int) -> float:
    return sum(s for end, s in zip(run["end_frame"], run["seconds"]) if end <= frame)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--frames", type=int, default=480, help="latent frames per rollout (480 = 2 min)")
    parser.add_argument("--naive-seconds", type=float, nargs="+", default=[10, 30, 60],
                        help="video lengths at which to compare against naive recompute")
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    runs = {}
    for policy in ("slow_fast", "full"):
        cfg = load_config(args.config, [*args.overrides, f"memory.policy={policy}"])
        torch.manual_seed(0)
        model = WanDiT(cfg.model).eval()
        text = torch.randn(1, cfg.text.max_length, cfg.model.text_dim)
        runs[policy] = streaming_run(cfg, model, text, args.frames)
    naive_frames = int(max(args.naive_seconds) * cfg.video.latent_fps)
    runs["naive_recompute"] = naive_recompute_run(cfg, model, text, naive_frames)

    report = {"config": args.config, "overrides": args.overrides, "frames": args.frames,
              "frame_seq_len": cfg.frame_seq_len, "runs": runs, "ratios": {}}
    print(f"\n{args.frames} latent frames ({args.frames / cfg.video.latent_fps:.0f} s), "
          f"{cfg.frame_seq_len} tokens per frame, {cfg.model.num_layers} layers")
    probe = min(10, len(runs["full"]["seconds"]) - 1)
    for policy in ("slow_fast", "full"):
        run = runs[policy]
        ratio = {"seconds_last_over_chunk10": _mean_tail(run["seconds"]) / _mean_around(run["seconds"], probe),
                 "cache_bytes_last_over_chunk10": run["cache_bytes"][-1] / run["cache_bytes"][probe]}
        report["ratios"][policy] = ratio
        print(f"  {policy:>10}: last chunk / chunk {probe}: time x{ratio['seconds_last_over_chunk10']:.2f}, "
              f"cache x{ratio['cache_bytes_last_over_chunk10']:.2f} "
              f"({run['cache_bytes'][probe] / 1024:.0f} KiB -> {run['cache_bytes'][-1] / 1024:.0f} KiB)")
    report["ratios"]["speedup_vs_naive"] = {}
    for seconds in args.naive_seconds:
        frame = int(seconds * cfg.video.latent_fps)
        speedup = seconds_to_reach(runs["naive_recompute"], frame) / seconds_to_reach(runs["slow_fast"], frame)
        report["ratios"]["speedup_vs_naive"][str(seconds)] = speedup
        print(f"  slow_fast vs naive recompute for a {seconds:.0f} s video: {speedup:.1f}x faster")

    write_report(args.out, "streaming", report, lambda path: plot(runs, path))
    return report


def _mean_tail(values: list[float], count: int = 5) -> float:
    return sum(values[-count:]) / len(values[-count:])


def _mean_around(values: list[float], index: int, count: int = 5) -> float:
    window = values[max(1, index - count // 2): index + count // 2 + 1]  # chunk 0 includes warm-up
    return sum(window) / len(window)


def plot(runs: dict, path: Path) -> None:
    plt = pyplot()

    fig, (ax_time, ax_bytes) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        ax_time.plot(run["end_frame"][1:], [s * 1000 for s in run["seconds"][1:]], label=name)
        if "cache_bytes" in run:
            ax_bytes.plot(run["end_frame"], [b / 1024 for b in run["cache_bytes"]], label=name)
    ax_time.set(xlabel="latent frame", ylabel="ms per chunk", title="time per chunk")
    ax_bytes.set(xlabel="latent frame", ylabel="KiB", title="KV cache held")
    for ax in (ax_time, ax_bytes):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
