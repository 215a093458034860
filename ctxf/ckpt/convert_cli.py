"""ctxf-convert: inspect and convert Wan transformer checkpoints (also `python -m ctxf.ckpt`).

    ctxf-convert inspect PATH [--json]
    ctxf-convert to-diffusers SRC DST [--role teacher] [--ema] [--dtype bf16]
    ctxf-convert to-wan SRC DST.safetensors            (or DST a directory, like Wan's releases)
    ctxf-convert zero-to-safetensors STEP_DIR DST [--role student] [--dtype bf16] [--max-shard-size 5GB]
    ctxf-convert merge-lora STEP_DIR DST [--role teacher] [--base BASE]
    ctxf-convert merge-lora --adapter teacher_lora.safetensors --base BASE DST

SRC is anything ctxf reads: a diffusers `WanTransformer3DModel` directory (or its pipeline), Wan's
original weights (.safetensors, .pth, a directory of shards), or a ctxf training step / run
directory (choose the weights with --role and --ema). Outputs appear whole or not at all; a
refused input exits with status 2 and one line saying which file and what is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys

from ctxf.ckpt.wan_keys import CheckpointError
from ctxf.config import ConfigError

EXIT_REFUSED = 2


def _add_output_options(parser: argparse.ArgumentParser, default_dtype: str = "keep") -> None:
    parser.add_argument("--dtype", choices=["keep", "fp32", "bf16", "fp16"], default=default_dtype,
                        help=f"dtype of the floating tensors written (default: {default_dtype})")
    parser.add_argument("--max-shard-size", default=None, metavar="SIZE",
                        help="shard the weights above this size, with an index (e.g. 5GB; default: one file)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists (only after success)")


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", default=None, help="training steps: student, critic or teacher (default: the "
                                                     "step's trained role)")
    parser.add_argument("--ema", action="store_true", help="training steps: the role's EMA weights")
    parser.add_argument("--head-dim", type=int, default=None,
                        help="channels per head for sources without config.json (default: 128, Wan2.1's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxf-convert", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="format, size, dtypes, geometry and keys of a checkpoint")
    inspect.add_argument("path", metavar="PATH")
    inspect.add_argument("--json", action="store_true", help="print JSON for scripts")

    for name, what in (("to-diffusers", "a WanTransformer3DModel directory (diffusers' from_pretrained loads it)"),
                       ("to-wan", "Wan's original key names (.safetensors file, or a directory with config.json)")):
        sub = commands.add_parser(name, help=f"convert SRC to {what}")
        sub.add_argument("src", metavar="SRC")
        sub.add_argument("dst", metavar="DST")
        _add_source_options(sub)
        _add_output_options(sub)

    zero = commands.add_parser("zero-to-safetensors",
                               help="consolidate a ZeRO-3 checkpoint into safetensors, one tensor in memory at a time")
    zero.add_argument("src", metavar="STEP_DIR", help="training step or run directory, or a DeepSpeed checkpoint")
    zero.add_argument("dst", metavar="DST", help="a directory (diffusers layout) or one .safetensors file")
    zero.add_argument("--role", default=None, help="training steps: which role's engine (default: the trained role)")
    _add_output_options(zero, default_dtype="fp32")

    merge = commands.add_parser("merge-lora", help="fold a LoRA adapter into its base weights (a diffusers directory)")
    merge.add_argument("paths", nargs="+", metavar="[STEP_DIR] DST",
                       help="a training step with a LoRA role, then the destination (or only DST with --adapter)")
    merge.add_argument("--role", default=None, help="the adapted role of the step (default: the trained role)")
    merge.add_argument("--adapter", default=None, help="an adapter file (<role>_lora.safetensors, its .json beside it)")
    merge.add_argument("--base", default=None, help="the base weights (default: what the adapter's .json names)")
    merge.add_argument("--head-dim", type=int, default=None,
                       help="channels per head when the base has no config.json (default: 128)")
    _add_output_options(merge)
    return parser


def _run(args: argparse.Namespace) -> None:
    from ctxf.ckpt import convert

    if args.command == "inspect":
        from ctxf.ckpt.inspect_checkpoint import format_report, inspect_path

        report = inspect_path(args.path)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return
    dtype = convert.DTYPES[args.dtype]
    output = {"max_shard_size": args.max_shard_size, "overwrite": args.overwrite, "dtype": dtype}
    if args.command in ("to-diffusers", "to-wan"):
        run = convert.to_diffusers if args.command == "to-diffusers" else convert.to_wan
        dst = run(args.src, args.dst, role=args.role, ema=args.ema, head_dim=args.head_dim, **output)
    elif args.command == "zero-to-safetensors":
        dst = convert.zero_to_safetensors(args.src, args.dst, role=args.role, **output)
    else:
        if len(args.paths) > 2 or (len(args.paths) == 1) != (args.adapter is not None):
            raise CheckpointError("merge-lora takes STEP_DIR DST, or DST alone with --adapter FILE")
        src = args.paths[0] if len(args.paths) == 2 else None
        dst = convert.merge_lora(args.paths[-1], src=src, role=args.role, adapter=args.adapter, base=args.base,
                                 head_dim=args.head_dim, **output)
    print(f"wrote {dst}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except (CheckpointError, ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
