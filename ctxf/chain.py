"""The whole recipe in one command: stage 0 -> ODE pairs -> ODE init -> contextual DMD -> a video.

    python -m ctxf.chain                                   # the embedded default on 2 CPU ranks (make run)
    python -m ctxf.chain --root runs/a --set train.num_steps=4 --set teacher:train.num_steps=10

Each stage is its own launch of `ctxf/train.py` (torchrun, `--nproc` ranks) with a preset
(`tiny`, `tiny_ode_init`, `tiny_context_dmd` by default; `--preset-prefix wan1.3b` for the
full-size ones) and starts from the previous stage's run directory by name:
`<root>/teacher` is the teacher of every later stage, `<root>/ode_init` the context-DMD
student's initialisation, and the final student in `<root>/context_dmd` streams a video into
`--video-dir` (default `<root>/generate`). Stages whose run completed are skipped, the others
resume (`--resume auto`), so running the command again continues an interrupted chain.

`--set key=value` applies to every stage; `--set STAGE:key=value` to one (teacher, ode_init,
context_dmd, generate).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
STAGES = ("teacher", "ode_pairs", "ode_init", "context_dmd", "generate")
PRESET_SUFFIX = {"teacher": "", "ode_init": "_ode_init", "context_dmd": "_context_dmd"}


def stage_overrides(settings: list[str], stage: str, known: tuple[str, ...] = STAGES) -> list[str]:
    """`--set` values for `stage`: the unprefixed ones and those prefixed `stage:` (one of `known`)."""
    chosen = []
    for item in settings:
        prefix, _, rest = item.partition(":")
        if rest and "=" not in prefix:
            if prefix not in known:
                raise SystemExit(f"--set {item}: unknown stage {prefix!r}; choose {', '.join(known[:-1])} or "
                                 f"{known[-1]}")
            if prefix == stage:
                chosen.append(rest)
        else:
            chosen.append(item)
    return chosen


def finished(run_dir: Path, preset: str, overrides: list[str]) -> bool:
    """The run in `run_dir` completed the configured number of steps (the chain skips it)."""
    from ctxf.config import load_config

    status = run_dir / "run_status.json"
    if not status.is_file():
        return False
    state = json.loads(status.read_text())
    return state.get("status") == "complete" and state.get("step") == load_config(preset, overrides).train.num_steps


def training_launch(nproc: int, master_port: int) -> list[str]:
    """The command prefix of one training stage: torchrun over `nproc` CPU ranks, ZeRO-3."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(master_port), str(REPO / "ctxf" / "train.py"),
            "--deepspeed", str(REPO / "ds_configs" / "zero3.json")]


def run_steps(steps: list[tuple[str, list[str]]], prog: str,
              on_done: Callable[[str, float], None] | None = None) -> int:
    """Run each (name, command) in turn with progress lines; stop at the first failure (its exit code).
    `on_done(name, seconds)` is called after each successful step."""
    env = {"TORCH_EXTENSIONS_DIR": str(REPO / ".torch_extensions"),  # DeepSpeed's CPU comm op, compiled once
           **os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for index, (name, command) in enumerate(steps, start=1):
        started = time.perf_counter()
        print(f"\n[{index}/{len(steps)}] {name}: {' '.join(command)}", flush=True)
        code = subprocess.run(command, cwd=REPO, env=env).returncode
        if code:
            print(f"{prog}: stage {name} failed (exit {code}); fix it and run the same command again: completed "
                  f"stages are kept and resumed", file=sys.stderr)
            return code
        seconds = time.perf_counter() - started
        print(f"[{index}/{len(steps)}] {name} done in {seconds:.0f} s", flush=True)
        if on_done is not None:
            on_done(name, seconds)
    return 0


def commands(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    root = Path(args.root).resolve()
    teacher, pairs = root / "teacher", root / "ode_pairs"
    preset = {stage: f"{args.preset_prefix}{suffix}" for stage, suffix in PRESET_SUFFIX.items()}
    launch = training_launch(args.nproc, args.master_port)
    links = {"teacher": [],
             "ode_init": [f"distill.teacher_checkpoint={teacher}", f"data.shards={pairs / 'manifest.json'}"],
             "context_dmd": [f"distill.teacher_checkpoint={teacher}", f"train.init_checkpoint={root / 'ode_init'}"]}
    steps = []
    for stage in ("teacher", "ode_init", "context_dmd"):
        overrides = [*links[stage], *stage_overrides(args.set, stage)]
        if stage == "ode_init":
            steps.append(("ode_pairs", [sys.executable, "-m", "data_pipeline.make_ode_pairs", "--config",
                                        preset["ode_init"], "--out", str(pairs), "--num-samples", str(args.pairs),
                                        # every rank reads whole shards: at least one shard per rank
                                        "--samples-per-shard", str(max(1, min(8, args.pairs // args.nproc))),
                                        "--set", f"distill.teacher_checkpoint={teacher}",
                                        *[f"--set={item}" for item in stage_overrides(args.set, "ode_pairs")]]))
        if finished(root / stage, preset[stage], overrides):
            continue
        steps.append((stage, [*launch, "--config", preset[stage], "--output-dir", str(root / stage), *overrides]))
    steps.append(("generate", [sys.executable, "-m", "ctxf.inference", "--config", preset["context_dmd"],
                               "--checkpoint", str(root / "context_dmd"), "--seconds", str(args.seconds),
                               "--output-dir", str(Path(args.video_dir).resolve() if args.video_dir else root / "generate"),
                               *stage_overrides(args.set, "generate")]))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxf.chain", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="outputs/train", help="directory of the stages' runs (default outputs/train)")
    parser.add_argument("--video-dir", help="where the final video goes (default <root>/generate)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks per training stage (default 2)")
    parser.add_argument("--master-port", type=int, default=29517, help="rendezvous port of the training launches")
    parser.add_argument("--preset-prefix", default="tiny", help="tiny (default) or wan1.3b")
    parser.add_argument("--pairs", type=int, default=64, help="teacher ODE trajectories to write (default 64)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of the final video (default 10)")
    parser.add_argument("--set", action="append", default=[], metavar="[STAGE:]KEY=VALUE",
                        help="config override for every stage, or for one with a STAGE: prefix (repeatable)")
    args = parser.parse_args(argv)
    steps = commands(args)
    print(f"chain: {' -> '.join(name for name, _ in steps)} in {Path(args.root).resolve()} (complete stages "
          f"are skipped)", flush=True)
    code = run_steps(steps, "ctxf.chain")
    if code:
        return code
    print(f"\nchain complete: video in {steps[-1][1][steps[-1][1].index('--output-dir') + 1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
