"""Cost of a distillation step per stage, on 2 CPU ranks (gloo), measured side by side.

For local_dmd and context_dmd with each `distill.teacher_context` (memory, contiguous, full) at
context-parallel degree 1 and 2, the real trainer runs a few steps of the tiny presets with a
9-frame window, the generator training every step (so each step has the rollout, the teacher's
two guided forwards, the critic and both backward passes). local_dmd rolls out the window
only; context_dmd a fixed 45 frames, so the teacher's context is 36 frames of history: at most
21 of them in `memory` (sink 3 + slow + fast 6), 9 `contiguous`, all 36 `full`. Reports
seconds per step (the fastest of the measured steps, after a warm-up step: robust to a shared
machine), each step's ratio to local_dmd, and the time and share of the step spent in the
teacher's forwards, the student's rollout and the critic's forwards (the methods' phase clocks,
reduced over ranks by the trainer).

    python benchmarks/bench_distill.py [--steps 4] [--out outputs/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import warnings
from pathlib import Path

import torch
import torch.multiprocessing as mp

from bench_report import pyplot, write_report
from ctxf.ckpt.checkpoint_files import save_diffusers_dir
from ctxf.config import load_config
from ctxf.models.wan import WanDiT
from ctxf.parallel.launch import LaunchInfo, init_distributed, shutdown

REPO = Path(__file__).resolve().parents[1]
CASES = [("local_dmd", "tiny_local_dmd", "none", 1), ("context memory", "tiny_context_dmd", "memory", 1),
         ("context contiguous", "tiny_context_dmd", "contiguous", 1), ("context full", "tiny_context_dmd", "full", 1),
         ("local_dmd cp2", "tiny_local_dmd", "none", 2), ("context memory cp2", "tiny_context_dmd", "memory", 2),
         ("context full cp2", "tiny_context_dmd", "full", 2)]
PHASES = ("teacher", "rollout", "critic")


def _worker(rank: int, world_size: int, port: int, config, result_dir: str) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(1)
    init_distributed("gloo", LaunchInfo(rank, world_size, rank, "127.0.0.1", port))
    from ctxf.parallel.plan import plan
    from ctxf.train import build_trainer

    build_trainer(config, plan(world_size, config)).run()
    shutdown(0)


def measure(preset: str, context: str, cp: int, steps: int, work: Path) -> dict:
    from ctxf.preflight import preflight

    run_dir = work / f"{preset}-{context}-cp{cp}"
    overrides = [f"distill.teacher_checkpoint={work / 'teacher'}", "train.init_checkpoint=",
                 f"train.output_dir={run_dir}", f"data.cache_dir={work / 'cache'}", "data.default_clips=8",
                 f"train.num_steps={steps + 1}", "train.log_every=1", "train.checkpoint_every=1000",
                 "train.sample_every=0", "distill.generator_every=1", f"parallel.context_parallel_degree={cp}",
                 "distill.contiguous_frames=9"]
    if preset == "tiny_context_dmd":
        overrides += [f"distill.teacher_context={context}", "distill.min_rollout_frames=45",
                      "distill.rollout_frames_start=45", "distill.rollout_frames_end=45"]
    else:
        overrides += ["distill.window_frames=9"]
    config = load_config(preset, overrides)
    preflight(config, "never", 2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, config, str(run_dir)), nprocs=2, join=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scalars = [r for r in records if "time/step" in r][1:]  # drop the warm-up step
    # the fastest step and the fastest time of each phase resist the load of a shared machine
    step_seconds = min(s["time/step"] for s in scalars)
    result = {"seconds_per_step": step_seconds, "rollout_frames": scalars[0].get("frames/rollout"),
              "teacher_context_frames": scalars[0].get("frames/teacher_context")}
    for phase in PHASES:
        result[f"{phase}_seconds"] = min(s.get(f"time/{phase}", 0.0) for s in scalars)
        result[f"{phase}_share"] = result[f"{phase}_seconds"] / step_seconds
    return result


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    names = list(results)
    fig, axis = plt.subplots(figsize=(10, 4))
    bottom = [0.0] * len(names)
    for phase in PHASES + ("other",):
        if phase == "other":
            values = [results[n]["seconds_per_step"] * (1 - sum(results[n][f"{p}_share"] for p in PHASES))
                      for n in names]
        else:
            values = [results[n]["seconds_per_step"] * results[n][f"{phase}_share"] for n in names]
        axis.bar(names, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    axis.set(ylabel="seconds per step (2 CPU ranks)", title="distillation step cost by phase")
    axis.tick_params(axis="x", rotation=30)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="measured steps per case (after one warm-up step)")
    parser.add_argument("--out", default="outputs/bench", help="directory for the JSON and the PNG")
    args = parser.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    os.environ["OMP_NUM_THREADS"] = "1"
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        save_diffusers_dir(WanDiT(load_config("tiny").model), work / "teacher")
        for name, preset, context, cp in CASES:
            results[name] = measure(preset, context, cp, args.steps, work)
    base = {1: results["local_dmd"]["seconds_per_step"], 2: results["local_dmd cp2"]["seconds_per_step"]}
    print(f"{'case':<20} {'s/step':>7} {'x local':>8} {'teacher ms':>10} {'teacher':>8} {'rollout':>8} "
          f"{'critic':>8} {'ctx frames':>10}")
    for (name, _, _, cp), row in zip(CASES, results.values()):
        row["ratio_to_local_dmd"] = row["seconds_per_step"] / base[cp]
        print(f"{name:<20} {row['seconds_per_step']:7.2f} {row['ratio_to_local_dmd']:8.2f} "
              f"{row['teacher_seconds'] * 1000:10.1f} {row['teacher_share']:8.1%} {row['rollout_share']:8.1%} {row['critic_share']:8.1%} "
              f"{row['teacher_context_frames']:10.0f}")
    write_report(args.out, "bench_distill", results, lambda path: plot(results, path))


if __name__ == "__main__":
    main()
