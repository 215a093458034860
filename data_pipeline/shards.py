"""Size-capped tar shards that are complete or absent, and the manifest describing them.

`AtomicShardWriter` wraps webdataset's `ShardWriter`: each shard is written under a `.partial`
name and renamed when closed, so a crash or Ctrl-C leaves only whole shards (the partial file is
removed). When the run finishes, `manifest.json` lists every shard with its sample count, size
and sha256, the settings used and what was skipped. Tar members get a fixed mtime so the same
samples give the same shard bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import webdataset as wds

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "ctxf-shards/1"
SHARD_PREFIX = "shard"
PARTIAL_SUFFIX = ".partial"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, payload: dict) -> None:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def prepare_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Create `out_dir`; refuse to mix with an earlier run's shards unless `overwrite` removes them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    old = sorted(out_dir.glob(f"{SHARD_PREFIX}-*.tar*")) + sorted(out_dir.glob(MANIFEST_NAME))
    if old and not overwrite:
        raise FileExistsError(f"{out_dir} already holds shards or a manifest ({old[0].name}, ...); pass --overwrite "
                              f"to replace them or choose another --out")
    for path in old:
        path.unlink()


class AtomicShardWriter:
    """Writes sample dicts (`data_pipeline`'s `encode_sample` output) to `<out>/shard-NNNNNN.tar`."""

    def __init__(self, out_dir: Path, *, max_bytes: float, max_samples: int, start_shard: int = 0):
        if max_bytes <= 0 or max_samples < 1:
            raise ValueError(f"shard caps must be positive, got max_bytes={max_bytes}, max_samples={max_samples}")
        self.out_dir = Path(out_dir)
        self.shards: list[dict] = []
        self._file = None
        self._counts: dict[str, int] = {}
        self._writer = wds.ShardWriter(str(self.out_dir / f"{SHARD_PREFIX}-%06d.tar"), maxcount=max_samples,
                                       maxsize=max_bytes, post=self._finish_shard, opener=self._open_partial,
                                       start_shard=start_shard, verbose=0, mtime=0, encoder=False)

    @property
    def num_samples(self) -> int:
        return sum(shard["num_samples"] for shard in self.shards) + sum(self._counts.values())

    def _open_partial(self, name: str):
        self._file = open(name + PARTIAL_SUFFIX, "wb")
        self._counts[name] = 0
        return self._file

    def _finish_shard(self, name: str) -> None:
        # ShardWriter does not close a stream that an opener gave it; close it before the rename.
        self._file.close()
        count = self._counts.pop(name)
        partial = Path(name + PARTIAL_SUFFIX)
        if count == 0:
            partial.unlink()
            return
        final = Path(name)
        os.replace(partial, final)
        self.shards.append({"name": final.name, "num_samples": count, "num_bytes": final.stat().st_size,
                            "sha256": file_sha256(final)})

    def write(self, sample: dict) -> None:
        self._writer.write(sample)
        self._counts[self._writer.fname] += 1

    def close(self) -> list[dict]:
        """Finish the last shard; returns the manifest entries of all shards."""
        self._writer.close()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (finished shards stay: each is complete)."""
        self._writer.post = None  # closing the tar stream must not publish the unfinished shard
        try:
            self._writer.finish()
        finally:
            if self._file is not None and not self._file.closed:
                self._file.close()
        for name in self._counts:
            Path(name + PARTIAL_SUFFIX).unlink(missing_ok=True)
        self._counts.clear()

    def __enter__(self) -> "AtomicShardWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_manifest(out_dir: Path, shards: list[dict], *, created_by: str, settings: dict,
                   skipped: list[dict] | None = None, extra: dict | None = None) -> Path:
    """`<out_dir>/manifest.json`: shards with counts and checksums, the settings, what was skipped."""
    payload = {"format": MANIFEST_FORMAT, "created_by": created_by, "settings": settings,
               "num_shards": len(shards), "num_samples": sum(s["num_samples"] for s in shards),
               "num_bytes": sum(s["num_bytes"] for s in shards), "shards": shards, "skipped": skipped or [],
               **(extra or {})}
    path = Path(out_dir) / MANIFEST_NAME
    write_json_atomic(path, payload)
    return path
