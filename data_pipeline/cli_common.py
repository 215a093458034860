"""Flags and output shared by the shard-writing CLIs (config, shard caps, payload dtypes, summary)."""

from __future__ import annotations

import argparse

from ctxf.config import Config, load_config
from ctxf.data.format import STORAGE_DTYPES


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model config (codec and text encoder)")
    group.add_argument("--config", default="tiny", help="ctxf preset name or YAML path (default: tiny)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="config override, repeatable, e.g. --set text.max_length=32")
    group = parser.add_argument_group("shards")
    group.add_argument("--out", required=True, help="output directory for shards and manifest.json")
    existing = group.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    existing.add_argument("--resume", action="store_true",
                          help="finish an interrupted run in --out: keep its complete shards, redo the partial one")
    group.add_argument("--max-shard-mb", type=float, default=256.0, help="close a shard at this size (default 256)")
    group.add_argument("--max-shard-samples", type=int, default=1000, help="samples per shard at most (default 1000)")
    group.add_argument("--latent-dtype", choices=list(STORAGE_DTYPES), default="float32",
                       help="stored latent dtype (default float32: exact)")
    group.add_argument("--text-dtype", choices=list(STORAGE_DTYPES), default="bfloat16",
                       help="stored text embedding dtype (default bfloat16)")
    group.add_argument("--previews", type=int, default=0, help="add an mp4 preview to the first N samples")
    group.add_argument("--captions-txt", action="store_true", help="add each caption as a .txt member")


def load_cli_config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def shard_settings(args: argparse.Namespace) -> dict:
    return {"config": args.config, "overrides": list(args.overrides), "max_shard_mb": args.max_shard_mb,
            "max_shard_samples": args.max_shard_samples, "latent_dtype": args.latent_dtype,
            "text_dtype": args.text_dtype}


def print_summary(title: str, rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def format_duration(seconds: float) -> str:
    """Seconds in the unit that suits their size: "42.0 s", "12.5 min", "3.20 h"."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
