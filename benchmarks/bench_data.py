"""Data pipeline throughput against what the tiny trainer consumes (docs/benchmarks.md).

Writes curtain-world shards (or reads `--shards`), then measures in one run:
- samples per second the `ShardLoader` delivers with 0, 1 and 2 DataLoader workers over whole
  epochs (shuffle buffer, window crop and collation included; worker start-up included);
- samples per second the tiny student consumes: one forward + backward + AdamW step of the
  default tiny `WanDiT` on one batch of the same shape. A real distillation step does several
  of those (rollout, critic, teacher), so this overstates consumption and the ratio is a floor.
Each setting is timed `--repeats` times and the fastest kept, so a busy machine disturbs the
ratios less. Prints the ratios and writes JSON and a PNG bar chart under `--out`.

    python benchmarks/bench_data.py [--out outputs/bench] [--clips 256] [--batch-size 4] [--num-frames 21]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from ctxf.config import load_config
from ctxf.data.loader import ShardLoader
from data_pipeline.clip_encoding import ClipEncoder
from data_pipeline.curtain import CurtainSpec
from data_pipeline.make_curtain import write_split

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks directory is not a package
from bench_report import pyplot, write_report  # noqa: E402


def measure_loader(shards: str, num_workers: int, args, max_length: int) -> dict:
    """Fastest of `--repeats` timings of `--epochs` epochs (the machine may be shared)."""
    loader = ShardLoader(shards, batch_size=args.batch_size, max_length=max_length, num_workers=num_workers,
                         shuffle_buffer=args.shuffle_buffer, seed=0, num_frames=args.num_frames)
    timings = []
    for _ in range(args.repeats):
        samples, first_batch = 0, None
        started = time.perf_counter()
        for _ in range(args.epochs):
            for batch in loader:
                if first_batch is None:
                    first_batch = time.perf_counter() - started
                samples += len(batch)
        timings.append((time.perf_counter() - started, first_batch))
    seconds, first_batch = min(timings)
    return {"num_workers": num_workers, "samples": samples, "seconds": seconds,
            "samples_per_second": samples / seconds, "first_batch_seconds": first_batch,
            "all_seconds": [t for t, _ in timings]}


def measure_trainer(batch, args) -> dict:
    from ctxf.models.wan import WanDiT

    cfg = load_config("tiny")
    model = WanDiT(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    latents, text = batch.latents, batch.text
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        timestep = torch.rand(latents.shape[0], latents.shape[2], generator=generator) * 1000
        output = model(latents, timestep, text)
        loss = (output.float() - latents).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup_steps):
        step()
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        timings.append(time.perf_counter() - started)
    seconds = min(timings)
    num_params = sum(p.numel() for p in model.parameters())
    return {"steps": args.steps, "seconds": seconds, "seconds_per_step": seconds / args.steps,
            "samples_per_second": args.steps * latents.shape[0] / seconds, "num_parameters": num_params,
            "batch_shape": list(latents.shape), "all_seconds": timings}


def write_shards(directory: Path, args) -> str:
    spec = CurtainSpec()
    write_split(spec, seed=0, split="train", count=args.clips, out_dir=directory,
                encoder=ClipEncoder(load_config("tiny")), max_samples=args.clips_per_shard)
    return str(directory / "manifest.json")


def plot(results: dict, path: Path) -> None:
    plt = pyplot()

    names = [f"loader, {r['num_workers']} workers" for r in results["loader"]] + ["tiny trainer step"]
    values = [r["samples_per_second"] for r in results["loader"]] + [results["trainer"]["samples_per_second"]]
    figure, axis = plt.subplots(figsize=(7, 3.5))
    bars = axis.barh(names, values, color=["tab:blue"] * len(results["loader"]) + ["tab:orange"])
    axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3)
    axis.set_xscale("log")
    axis.set_xlabel("samples per second (log scale)")
    shape = results["trainer"]["batch_shape"]
    axis.set_title(f"data loader vs. tiny trainer, batch {shape}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"), help="where JSON and PNG go")
    parser.add_argument("--shards", help="read these shards instead of writing curtain shards")
    parser.add_argument("--clips", type=int, default=256, help="curtain clips to write (default 256)")
    parser.add_argument("--clips-per-shard", type=int, default=16, help="clips per shard (default 16)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per batch (default 4)")
    parser.add_argument("--num-frames", type=int, default=21, help="latent frames per sample window (default 21)")
    parser.add_argument("--shuffle-buffer", type=int, default=64, help="loader shuffle buffer (default 64)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs read per worker setting (default 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=20, help="timed trainer steps (default 20)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed trainer steps first (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the trainer step (default 1, as OMP_NUM_THREADS=1 CPU runs use)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="time each setting this often and keep the fastest (default 3)")
    args = parser.parse_args(argv)
    cfg = load_config("tiny")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as scratch:
        shards = args.shards or write_shards(Path(scratch) / "curtain", args)
        loader_results = [measure_loader(shards, workers, args, cfg.text.max_length) for workers in args.workers]
        first = next(iter(ShardLoader(shards, batch_size=args.batch_size, max_length=cfg.text.max_length,
                                      num_frames=args.num_frames)))
    trainer = measure_trainer(first, args)
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "torch_threads": torch.get_num_threads(),
               "loader": loader_results, "trainer": trainer,
               "ratios": {str(r["num_workers"]): r["samples_per_second"] / trainer["samples_per_second"]
                          for r in loader_results}}

    print(f"\ntiny trainer: {trainer['samples_per_second']:.1f} samples/s "
          f"({trainer['seconds_per_step'] * 1000:.1f} ms per forward+backward+AdamW step, batch "
          f"{trainer['batch_shape']}, {trainer['num_parameters']:,} parameters)")
    for r in loader_results:
        print(f"loader, {r['num_workers']} workers: {r['samples_per_second']:8.1f} samples/s "
              f"(first batch after {r['first_batch_seconds']:.2f} s)  ratio to trainer "
              f"{results['ratios'][str(r['num_workers'])]:.1f}x")
    write_report(args.out, "bench_data", results, lambda path: plot(results, path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
