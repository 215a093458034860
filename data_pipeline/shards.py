"""Size-capped tar shards that are complete or absent, and the manifest describing them.

`AtomicShardWriter` wraps webdataset's `ShardWriter`: each shard is written under a `.partial`
name and renamed when closed, so a crash or Ctrl-C leaves only whole shards (the partial file is
removed). When the run finishes, `manifest.json` lists every shard with its sample count, size
and sha256, the settings used and what was skipped. A run into a directory an interrupted run
left behind continues it (`--resume`: the complete shards stay, the partial one is redone) or
starts over (`--overwrite`); without either it is refused. Tar members get a fixed mtime so the same
samples give the same shard bytes.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from ctxf.data.sources import file_sha256

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "ctxf-shards/1"
SHARD_PREFIX = "shard"
PARTIAL_SUFFIX = ".partial"


def write_json_atomic(path: Path, payload: dict) -> None:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


class OutputDirInUse(ValueError):
    """The output directory holds an earlier run's shards and neither --resume nor --overwrite was given."""


@dataclass
class ResumePoint:
    """The complete shards an interrupted run left (kept) and the sample keys they hold."""

    shards: list[dict] = field(default_factory=list)  # manifest entries, in shard order
    keys: list[str] = field(default_factory=list)  # sample keys in the order written

    @property
    def next_shard(self) -> int:
        return len(self.shards)


def prepare_output_dir(out_dir: Path, overwrite: bool = False, resume: bool = False) -> ResumePoint:
    """Create `out_dir` for a run. An earlier run's shards are removed (`overwrite`), kept to be
    continued (`resume`: complete shards stay, the `.partial` one is redone) or refused naming both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    old = _earlier_run_files(out_dir)
    if not old:
        return ResumePoint()
    if overwrite:
        for path in old:
            path.unlink()
        return ResumePoint()
    if not resume:
        raise OutputDirInUse(output_dir_in_use(out_dir))
    for partial in out_dir.glob(f"*{PARTIAL_SUFFIX}"):
        partial.unlink()
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # rewritten when the resumed run ends
    point = ResumePoint()
    for number, path in enumerate(sorted(out_dir.glob(f"{SHARD_PREFIX}-*.tar"))):
        if path.name != f"{SHARD_PREFIX}-{number:06d}.tar":
            raise OutputDirInUse(f"{out_dir}: {path.name} follows a gap in the shard numbers, so it is not one "
                                 f"interrupted run; pass --overwrite to start again")
        keys = shard_keys(path)
        point.keys += keys
        point.shards.append({"name": path.name, "num_samples": len(keys), "num_bytes": path.stat().st_size,
                             "sha256": file_sha256(path)})
    return point


def sample_members(path: Path, key: str) -> dict[str, bytes]:
    """The members of sample `key` in a tar shard, by extension (`latents.safetensors`, `json`, ...)."""
    members = {}
    with tarfile.open(path, "r") as archive:
        for member in archive:
            if member.isreg() and member.name.startswith(key + "."):
                members[member.name[len(key) + 1:]] = archive.extractfile(member).read()
    return members


def _earlier_run_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob(f"{SHARD_PREFIX}-*.tar*")) + sorted(out_dir.glob(MANIFEST_NAME + "*"))


def output_dir_in_use(out_dir: Path) -> str | None:
    """The one-line refusal for writing into `out_dir` without --resume or --overwrite (None: it is free)."""
    old = _earlier_run_files(out_dir) if out_dir.is_dir() else []
    if not old:
        return None
    finished = "a finished run" if (out_dir / MANIFEST_NAME).exists() else "an interrupted run"
    return (f"{out_dir} holds shards of {finished} ({old[0].name}, ...): pass --resume to finish it or --overwrite "
            f"to replace it, or choose another --out")


def shard_keys(path: Path) -> list[str]:
    """Sample keys of a tar shard in the order written (members `<key>.<ext>`), by the standard library."""
    keys: dict[str, None] = {}
    with tarfile.open(path, "r") as archive:
        for member in archive:
            if member.isreg():
                directory, _, name = member.name.rpartition("/")
                keys.setdefault(f"{directory}/{name.split('.', 1)[0]}".lstrip("/"), None)
    return list(keys)


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
