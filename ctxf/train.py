"""Training entry point. For now it plans the job: `--validate-only` prints the process groups,
the batch arithmetic, the completed DeepSpeed config and the memory and communication estimates
per GPU, without starting any process. The training stages come with a later issue.

    python -m ctxf.train --validate-only --world-size 64 --config wan1.3b train.global_batch_size=64
    deepspeed ctxf/train.py --deepspeed ds_configs/zero3.json --config wan1.3b ...
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

from ctxf.config import DEFAULT_PRESET, ConfigError, load_config  # noqa: E402
from ctxf.parallel.ds_config import deepspeed_config  # noqa: E402
from ctxf.parallel.launch import launch_info  # noqa: E402
from ctxf.parallel.plan import plan  # noqa: E402
from ctxf.parallel.summary import describe_plan  # noqa: E402

NOT_IMPLEMENTED = ("training stages are not implemented yet (a later issue adds them); "
                   "run with --validate-only to check the plan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ctxf.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_PRESET, help="preset name (ctxf/configs/) or a YAML path")
    parser.add_argument("--world-size", type=int, default=None,
                        help="ranks to plan for (default: the launcher's WORLD_SIZE, else 1)")
    parser.add_argument("--validate-only", action="store_true",
                        help="plan the job and print it; start nothing")
    parser.add_argument("--deepspeed", dest="ds_config", default=None,
                        help="DeepSpeed JSON, the same as parallel.ds_config=PATH")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.validate_only:
        print(f"error: {NOT_IMPLEMENTED}", file=sys.stderr)
        return 2
    overrides = list(args.overrides) + ([f"parallel.ds_config={args.ds_config}"] if args.ds_config else [])
    try:
        config = load_config(args.config, overrides)
        world_size = args.world_size if args.world_size is not None else launch_info().world_size
        parallel_plan = plan(world_size, config)
        ds_config = deepspeed_config(config, parallel_plan)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"dry run: preset {args.config}, {world_size} ranks (no process started)")
    print(describe_plan(config, parallel_plan))
    print(f"DeepSpeed config ({config.parallel.ds_config}, derived fields filled in)")
    print("\n".join("  " + line for line in json.dumps(ds_config, indent=2).splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
