"""Check shards against their manifest: presence, size, sha256 and sample count.

    python -m data_pipeline.manifest outputs/curtain/train/manifest.json [--no-count]

Exits 1 and lists the problems when any shard is missing, altered or holds another number of
samples than recorded; prints a one-line summary otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from ctxf.data.sources import file_sha256
from data_pipeline.shards import shard_keys


def count_samples(path: Path) -> int:
    """Distinct keys in a tar shard (members `<key>.<ext>`)."""
    return len(shard_keys(path))


def verify_manifest(manifest_path: Path, count: bool = True, progress: bool = False) -> list[str]:
    """Problems found, one line each (empty: every shard matches its record)."""
    manifest = json.loads(Path(manifest_path).read_text())
    problems = []
    for entry in tqdm(manifest["shards"], desc="verifying shards", unit="shard", disable=not progress):
        path = Path(manifest_path).parent / entry["name"]
        if not path.is_file():
            problems.append(f"{entry['name']}: missing")
            continue
        if path.stat().st_size != entry["num_bytes"]:
            problems.append(f"{entry['name']}: {path.stat().st_size} bytes, manifest says {entry['num_bytes']}")
        elif file_sha256(path) != entry["sha256"]:
            problems.append(f"{entry['name']}: sha256 differs from the manifest (altered or damaged)")
        elif count and count_samples(path) != entry["num_samples"]:
            problems.append(f"{entry['name']}: sample count differs from the manifest's {entry['num_samples']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.manifest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="a manifest.json written by a data_pipeline CLI")
    parser.add_argument("--no-count", action="store_true", help="skip re-counting samples in each shard")
    args = parser.parse_args(argv)
    if not args.manifest.is_file():
        parser.error(f"{args.manifest} does not exist")
    manifest = json.loads(args.manifest.read_text())
    problems = verify_manifest(args.manifest, count=not args.no_count, progress=True)
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{args.manifest}: {manifest['num_shards']} shards, {manifest['num_samples']} samples, "
          f"{manifest['num_bytes'] / 1e6:.1f} MB, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
