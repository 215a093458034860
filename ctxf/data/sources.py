"""Shard sources -> an explicit list of shard URLs, checked before any reading starts.

A source is a string or a list of strings. A string may join several sources with `::`
(webdataset's separator). Each source is one of:
- a local tar path, or a brace pattern such as `out/shard-{000000..000099}.tar`;
- a `pipe:` command whose standard output is a tar stream, e.g. `pipe:cat out/shard-000000.tar`
  (one per shard: the command is not expanded or checked, webdataset runs it with a shell);
- a manifest written by `data_pipeline` (`.../manifest.json`): its shards, relative to it. Its
  sha256 and size of each shard are what the reader checks a shard against before reading it
  (`shard_checksums`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from webdataset.shardlists import expand_urls

MANIFEST_SUFFIX = ".json"


class ShardSourceError(ValueError):
    """The shard list is empty, malformed or names files that do not exist."""


@dataclass(frozen=True)
class ShardRecord:
    """What a manifest says a shard holds."""

    sha256: str
    num_bytes: int


def _manifest_entries(path: Path) -> list[dict]:
    if not path.is_file():
        raise ShardSourceError(f"manifest {path} does not exist; run a data_pipeline CLI to write it, or list the "
                               f"shards themselves")
    try:
        entries = json.loads(path.read_text())["shards"]
        if not all(isinstance(entry["name"], str) for entry in entries):
            raise TypeError("every shard's name must be a string")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ShardSourceError(f"{path} is not a shard manifest (expected {{'shards': [{{'name': ...}}, ...]}}): "
                               f"{err}") from err
    return entries


def _manifest_shards(path: Path) -> list[str]:
    return [str(path.parent / entry["name"]) for entry in _manifest_entries(path)]


def _source_parts(sources: str | list[str]) -> list[str]:
    items = [sources] if isinstance(sources, str) else list(sources)
    parts = [part.strip() for item in items for part in item.split("::")] if items else []
    return [part for part in parts if part]


def shard_checksums(sources: str | list[str]) -> dict[str, ShardRecord]:
    """URL -> the manifest's sha256 and size, for every shard that comes from a manifest recording them."""
    records = {}
    for part in _source_parts(sources):
        if part.startswith("pipe:") or not part.endswith(MANIFEST_SUFFIX):
            continue
        for entry in _manifest_entries(Path(part)):
            if "sha256" in entry and "num_bytes" in entry:
                records[str(Path(part).parent / entry["name"])] = ShardRecord(entry["sha256"], int(entry["num_bytes"]))
    return records


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_alteration(url: str, record: ShardRecord) -> str | None:
    """Why the shard at `url` is not what its manifest recorded (None: size and sha256 match)."""
    size = Path(url).stat().st_size
    if size != record.num_bytes:
        return f"{size} bytes, the manifest says {record.num_bytes}"
    if file_sha256(url) != record.sha256:
        return "its sha256 differs from the manifest's"
    return None


def _expand_one(source: str) -> list[str]:
    if source.startswith("pipe:"):
        return [source]
    if source.endswith(MANIFEST_SUFFIX):
        return _manifest_shards(Path(source))
    return list(expand_urls(source))


def expand_shards(sources: str | list[str]) -> list[str]:
    """Every shard URL named by `sources`, in order. Local files must exist."""
    parts = _source_parts(sources)
    if not parts:
        raise ShardSourceError("the shard list is empty: set data.shards to shard paths, a brace pattern such as "
                               "out/shard-{000000..000009}.tar, a pipe: command, or a manifest.json written by "
                               "data_pipeline")
    urls = [url for part in parts for url in _expand_one(part)]
    if not urls:
        raise ShardSourceError(f"the shard sources {parts} name no shards (an empty manifest?)")
    local = [url for url in urls if not url.startswith(("pipe:", "http:", "https:"))]
    directories = [url for url in local if Path(url.removeprefix("file:")).is_dir()]
    if directories:
        raise ShardSourceError(f"{directories[0]} is a directory; name its manifest.json or a pattern such as "
                               f"{directories[0]}/shard-{{000000..000009}}.tar")
    missing = [url for url in local if not Path(url.removeprefix("file:")).is_file()]
    if missing:
        raise ShardSourceError(f"{len(missing)} of {len(urls)} shards do not exist, first: {missing[0]}; "
                               f"check data.shards (brace ranges are inclusive) or regenerate the shards")
    duplicates = sorted(url for url, count in Counter(urls).items() if count > 1)
    if duplicates:
        raise ShardSourceError(f"shard {duplicates[0]} is listed more than once; an epoch would read it twice")
    return urls
