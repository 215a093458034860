"""Training throughput of the real trainer (stage 0, the tiny default) on CPU/gloo.

For each setting, `ctxf/train.py` runs under torchrun for --steps steps, saving a checkpoint half
way and at the end, then resumes from the last one for two more steps. From the run's own metrics.jsonl (what
TensorBoard shows) it reports steps/s and the step time split into data / forward / backward /
optimizer, plus checkpoint save and load seconds. Settings: 1 and 2 ranks, context parallel
degree 1 and 2, all weights trained ("replicated" data parallel under ZeRO-3) and LoRA.
Ratios are against 1 rank, cp 1, all weights. JSON and PNG go to --out.

    python benchmarks/bench_train.py [--steps 30] [--out outputs/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks directory is not a package
from bench_report import pyplot, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [  # name, ranks, overrides
    ("1 rank", 1, []),
    ("2 ranks, data parallel", 2, ["train.global_batch_size=2"]),
    ("2 ranks, cp 2", 2, ["train.global_batch_size=1", "parallel.context_parallel_degree=2"]),
    ("1 rank, LoRA", 1, ["lora.rank=8"]),
    ("2 ranks, data parallel, LoRA", 2, ["train.global_batch_size=2", "lora.rank=8"]),
]
PHASES = ["data", "forward", "backward", "optimizer"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(ranks: int, run_dir: Path, overrides: list[str], num_steps: int) -> None:
    command = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(ranks), "--master_port",
               str(free_port()), str(REPO / "ctxf" / "train.py"), "--output-dir", str(run_dir),
               f"train.num_steps={num_steps}", "train.log_every=1", "train.sample_every=0",
               f"train.checkpoint_every={max(1, num_steps // 2)}", *overrides]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(command)}):\n{done.stderr[-3000:]}")


def measure(name: str, ranks: int, overrides: list[str], args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_train_") as scratch:
        run_dir = Path(scratch) / "run"
        train(ranks, run_dir, overrides, args.steps)
        train(ranks, run_dir, overrides, args.steps + 2)
        records = {}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            records[record["step"]] = record
    saved_at = args.steps // 2  # the mid-run save; its seconds are logged with the next step
    timed = [r for step, r in records.items() if args.warmup_steps < step <= args.steps]
    step_seconds = statistics.median(r["time/step"] for r in timed)
    result = {"name": name, "ranks": ranks, "overrides": overrides, "steps_per_second": 1.0 / step_seconds,
              "seconds_per_step": step_seconds,
              "phases": {p: statistics.median(r.get(f"time/{p}", 0.0) for r in timed) for p in PHASES},
              "checkpoint_save_seconds": records[saved_at + 1]["time/checkpoint"],
              "checkpoint_load_seconds": records[args.steps + 1]["time/restore"],
              "samples_per_second": statistics.median(r["samples_per_s"] for r in timed)}
    print(f"{name:32s} {result['steps_per_second']:6.2f} steps/s  save {result['checkpoint_save_seconds']:.2f} s"
          f"  load {result['checkpoint_load_seconds']:.2f} s")
    return result


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot()
    figure, (split, checkpoint) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    names = [r["name"] for r in results]
    left = [0.0] * len(results)
    for phase in PHASES:
        widths = [r["phases"][phase] * 1000 for r in results]
        split.barh(names, widths, left=left, label=phase)
        left = [a + b for a, b in zip(left, widths)]
    split.set_xlabel("median step time, ms (other: logging, reduction)")
    split.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(PHASES))
    split.invert_yaxis()
    positions = range(len(results))
    checkpoint.barh([p - 0.2 for p in positions], [r["checkpoint_save_seconds"] for r in results], 0.4, label="save")
    checkpoint.barh([p + 0.2 for p in positions], [r["checkpoint_load_seconds"] for r in results], 0.4, label="load")
    checkpoint.set_yticks(list(positions), [""] * len(results))
    checkpoint.invert_yaxis()
    checkpoint.set_xlabel("checkpoint seconds")
    checkpoint.legend()
    figure.suptitle("stage 0 training, tiny model, CPU/gloo")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"), help="where JSON and PNG go")
    parser.add_argument("--steps", type=int, default=30, help="steps per setting before the checkpoint (default 30)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="first steps left out of the timing (default 5)")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup_steps:
        parser.error("--steps must be larger than --warmup-steps")
    results = [measure(name, ranks, overrides, args) for name, ranks, overrides in SETTINGS]
    base = results[0]["steps_per_second"]
    for result in results:
        result["steps_per_second_ratio"] = result["steps_per_second"] / base
        result["samples_per_second_ratio"] = result["samples_per_second"] / results[0]["samples_per_second"]
        print(f"{result['name']:32s} steps/s x{result['steps_per_second_ratio']:.2f}, "
              f"samples/s x{result['samples_per_second_ratio']:.2f} of 1 rank")
    write_report(args.out, "bench_train", {"settings": vars(args) | {"out": str(args.out)}, "results": results},
                 lambda path: plot(results, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
