"""What rotating cached keys once per chunk buys, measured side by side in one process.

The generator rotates the memory's keys to their RoPE positions once per chunk
(`WanDiT.rotate_memory`) and reuses them in the chunk's 4 denoising passes and its refresh pass.
The alternative, still what the model does with an un-rotated view, rotates them in every layer
of every pass. The machine is shared (other processes' bursts make a whole rollout 2-3x slower
at random), so whole rollouts are too noisy to compare a few percent; instead a stream is run
until its cache is in a given state (Slow-Fast Memory full, bounded; full history after
`--frames` frames, the late state of a long video), and then the same chunk is generated again
and again against that frozen cache, alternating the two variants, `--samples` times each. A
time is the fastest sample (as `timeit` reports); the median is printed too. Also checks that
both variants produce bit-identical chunks. Writes `rope.json` and `rope.png`.

    python benchmarks/bench_rope.py [--frames 480] [--samples 60] [--out outputs/bench]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench_report import pyplot, write_report
from ctxf.config import load_config
from ctxf.inference.generator import StreamingGenerator
from ctxf.memory.cache import build_memory
from ctxf.models.wan import WanDiT

VARIANTS = ("once_per_chunk", "every_pass")


def timed_chunk(generator: StreamingGenerator, text: torch.Tensor, shape: tuple, variant: str) -> tuple[float, torch.Tensor]:
    """One chunk against the frozen cache; `every_pass` hands the model un-rotated views."""
    model = generator.model
    if variant == "every_pass":
        model.rotate_memory = lambda view, height, width: view  # the model then rotates in every pass
    try:
        started = time.perf_counter()
        chunk = generator.generate_chunk(text, shape, torch.Generator().manual_seed(1))
        return time.perf_counter() - started, chunk
    finally:
        model.__dict__.pop("rotate_memory", None)


def measure(cfg, num_frames: int, samples: int) -> dict:
    torch.manual_seed(0)
    model = WanDiT(cfg.model).eval()
    text = torch.randn(1, cfg.text.max_length, cfg.model.text_dim)
    generator = StreamingGenerator(model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
    for _ in generator.stream(num_frames, text, shape):
        pass
    generator.memory.append = lambda *args, **kwargs: None  # freeze the cache: every sample is the same chunk
    times = {variant: [] for variant in VARIANTS}
    chunks = {}
    for _ in tqdm(range(samples), desc=cfg.memory.policy, unit="sample", leave=False):
        for variant in VARIANTS:
            seconds, chunks[variant] = timed_chunk(generator, text, shape, variant)
            times[variant].append(seconds)
    fastest = {variant: min(t) for variant, t in times.items()}
    median = {variant: statistics.median(t) for variant, t in times.items()}
    return {"cached_frames": generator.memory.view(cfg.video.num_frames_per_block).num_cached_frames,
            "seconds": times, "fastest": fastest, "median": median,
            "speedup_fastest": fastest["every_pass"] / fastest["once_per_chunk"],
            "speedup_median": median["every_pass"] / median["once_per_chunk"],
            "bit_identical": bool(torch.equal(chunks["once_per_chunk"], chunks["every_pass"]))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--frames", type=int, default=480, help="latent frames streamed before measuring")
    parser.add_argument("--samples", type=int, default=60, help="chunks timed per variant")
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    report = {"config": args.config, "overrides": args.overrides, "frames": args.frames, "samples": args.samples,
              "threads": torch.get_num_threads(), "policies": {}}
    for policy in ("slow_fast", "full"):
        cfg = load_config(args.config, [*args.overrides, f"memory.policy={policy}"])
        report["policies"][policy] = measure(cfg, args.frames, args.samples)

    print(f"\nafter {args.frames} latent frames, {cfg.frame_seq_len} tokens per frame, {cfg.model.num_layers} layers, "
          f"{len(cfg.diffusion.denoising_steps)} steps + refresh per chunk, {args.samples} samples each, "
          f"torch threads {torch.get_num_threads()}")
    for policy, row in report["policies"].items():
        print(f"  {policy:>10} ({row['cached_frames']} cached frames): ms per chunk rotating in every pass -> once "
              f"per chunk: fastest {row['fastest']['every_pass'] * 1000:.2f} -> {row['fastest']['once_per_chunk'] * 1000:.2f} "
              f"(x{row['speedup_fastest']:.2f}), median {row['median']['every_pass'] * 1000:.2f} -> "
              f"{row['median']['once_per_chunk'] * 1000:.2f} (x{row['speedup_median']:.2f}); "
              f"bit-identical: {row['bit_identical']}")
    write_report(args.out, "rope", report, lambda path: plot(report, path))
    return report


def plot(report: dict, path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, len(report["policies"]), figsize=(11, 4))
    for ax, (policy, row) in zip(axes, report["policies"].items()):
        ax.boxplot([[s * 1000 for s in row["seconds"][variant]] for variant in VARIANTS],
                   tick_labels=[variant.replace("_", " ") for variant in VARIANTS], showfliers=False)
        ax.set(ylabel="ms per chunk", title=f"{policy}, {row['cached_frames']} cached frames")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
