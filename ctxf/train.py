"""Training entry point: `deepspeed ctxf/train.py --deepspeed ds_configs/zero3.json [--config ...] [key=value ...]`.

With no other argument it trains the embedded default (stage 0, the context teacher, of the tiny
model on the built-in curtain world) on CPU. The same file runs under torchrun and srun. Every
check that can fail (config, parallel layout, data, LoRA targets, checkpoint geometry, the step
to resume) runs before any process group starts. `--validate-only` plans a job and prints it.

    deepspeed --num_gpus 2 ctxf/train.py --deepspeed ds_configs/zero3.json
    torchrun --nproc_per_node 8 ctxf/train.py --config wan1.3b train.init_checkpoint=/ckpt/Wan2.1-T2V-1.3B
    python -m ctxf.train --validate-only --world-size 64 --config wan1.3b
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (`deepspeed ctxf/train.py`): Python put ctxf/ first on sys.path, where the
    # package's modules could shadow top-level ones. Import the package from the repository root.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

import yaml  # noqa: E402

from ctxf.ckpt.wan_keys import CheckpointError  # noqa: E402
from ctxf.config import DEFAULT_PRESET, Config, ConfigError, load_config  # noqa: E402
from ctxf.data.sources import ShardSourceError  # noqa: E402
from ctxf.parallel.ds_config import deepspeed_config  # noqa: E402
from ctxf.parallel.launch import LaunchInfo, configure_cpu_threads, init_distributed, launch_info, shutdown  # noqa: E402
from ctxf.parallel.plan import ParallelPlan, plan  # noqa: E402
from ctxf.parallel.summary import describe_plan  # noqa: E402
from ctxf.preflight import PreflightResult, preflight  # noqa: E402
from ctxf.stages.config import describe_stage  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ctxf.train", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_PRESET, help="preset name (ctxf/configs/) or a YAML path")
    parser.add_argument("--deepspeed", dest="ds_config", default=None,
                        help="DeepSpeed JSON, the same as parallel.ds_config=PATH")
    parser.add_argument("--resume", default="auto",
                        help="auto (default): the newest complete step in train.output_dir; never; or a step "
                             "directory")
    parser.add_argument("--output-dir", default=None, help="run directory, the same as train.output_dir=DIR")
    parser.add_argument("--validate-only", action="store_true", help="plan the job and print it; start nothing")
    parser.add_argument("--world-size", type=int, default=None,
                        help="ranks to plan for with --validate-only (default: the launcher's WORLD_SIZE, else 1)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser.parse_args(argv)


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = [f"parallel.ds_config={args.ds_config}"] if args.ds_config else []
    extra += [f"train.output_dir={args.output_dir}"] if args.output_dir else []
    return list(args.overrides) + extra


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, _overrides(args))
        info = launch_info()
        world_size = args.world_size if args.world_size is not None else info.world_size
        parallel_plan = plan(world_size, config)
        ds_config = deepspeed_config(config, parallel_plan)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.validate_only:
        print(f"dry run: preset {args.config}, {world_size} ranks (no process started)")
        print(describe_stage(config))
        print(describe_plan(config, parallel_plan))
        print(f"DeepSpeed config ({config.parallel.ds_config}, derived fields filled in)")
        print("\n".join("  " + line for line in json.dumps(ds_config, indent=2).splitlines()))
        return 0
    try:
        checked = preflight(config, args.resume, world_size)
    except (ConfigError, CheckpointError, ShardSourceError, ValueError) as err:
        if info.rank == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    return train(config, parallel_plan, checked, info)


def build_trainer(config: Config, parallel_plan: ParallelPlan, local_rank: int = 0):
    """Topology, runtime, method (models and engines), loader and trainer of this rank; needs the
    default process group (tests call this inside their workers)."""
    import torch
    import torch.distributed as dist

    from ctxf.data.loader import ShardLoader
    from ctxf.parallel.context_parallel import ContextParallelModel
    from ctxf.parallel.engines import build_engine
    from ctxf.parallel.teacher import FrozenTeacher
    from ctxf.parallel.topology import Topology
    from ctxf.stages import build_method
    from ctxf.stages.base import Runtime
    from ctxf.trainer import Trainer

    topology = Topology(parallel_plan, pad_sequence=config.parallel.pad_sequence)
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    runtime = Runtime(config=config, device=device, data_parallel_rank=topology.data_parallel_rank,
                      build_engine=lambda model, role: build_engine(model, role, config, topology),
                      sequence_parallel=lambda model: ContextParallelModel(model, topology.context_parallel),
                      frozen_teacher=lambda model: FrozenTeacher(model, topology))
    method = build_method(runtime)
    loader = ShardLoader.from_config(config, rank=topology.data_parallel_rank,
                                     world_size=parallel_plan.data_parallel_size)
    return Trainer(config, method, loader, rank=dist.get_rank(), world_size=parallel_plan.world_size,
                   gradient_accumulation_steps=parallel_plan.gradient_accumulation_steps,
                   zero_group=topology.zero_group)


def train(config: Config, parallel_plan: ParallelPlan, checked: PreflightResult, info: LaunchInfo) -> int:
    """Join the job, build everything, run the loop, leave (this function ends the process)."""
    from ctxf.trainer import StopRequest, TrainingAborted

    stop = StopRequest()  # first: SIGTERM / SIGUSR1 during start-up saves after the first step
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    configure_cpu_threads(info)
    info = init_distributed(config.parallel.backend, info)
    if info.rank == 0:
        run_dir = Path(config.train.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        print(f"training stage {config.train.stage}: {parallel_plan.world_size} ranks, "
              f"{config.train.num_steps} steps, global batch {parallel_plan.global_batch_size}, run dir {run_dir}",
              flush=True)
    trainer = build_trainer(config, parallel_plan, info.local_rank)
    try:
        result = trainer.run(checked.resume_from, stop)
    except TrainingAborted as err:
        if info.rank == 0:
            print(f"error: {err}", file=sys.stderr, flush=True)
        shutdown(exit_code=1)
    if info.rank == 0:
        print(f"training {result.status} at step {result.step} ({result.skipped_steps} steps skipped); "
              f"checkpoints in {Path(config.train.output_dir) / 'checkpoints'}", flush=True)
    shutdown(exit_code=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
