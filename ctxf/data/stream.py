"""One reader's stream for one epoch: its shards -> samples -> shuffle -> decode -> crop -> batches.

A reader is one (rank, DataLoader worker) pair. Everything a reader yields is a pure function of
(shard list, settings, epoch, rank, world size, worker, number of workers): no wall clock, no
process-global random state. That is what makes the loader's resume exact (see `loader.py`).

Shard assignment: the epoch's shard order (a permutation seeded by seed and epoch, identical on
every rank) is split by rank (`order[rank::world_size]`) and then by worker
(`[worker::num_workers]`), so every shard, and so every sample, belongs to exactly one reader.
This is webdataset's split_by_node + split_by_worker, written here because those read the rank
from the environment / torch.distributed and the worker from torch globals, while this project
passes ranks explicitly and tests the assignment by simulating every reader in one process.

The stages are webdataset's own (`gopen` for paths and `pipe:` commands, `tar_file_iterator`,
`group_by_keys`, `shuffle`) assembled here rather than through `webdataset.WebDataset`, whose
splitters take the rank from the environment and whose handlers see exceptions without knowing
which kind of damage to count.

Errors never stop a reader: a shard that cannot be opened or whose tar is damaged ends that shard
(the samples read before the damage are kept); a sample whose members do not decode is dropped; a
sample whose shapes or dtypes do not fit the configured model (`sample_checks.py`) is dropped,
the first few named; a shard whose size or sha256 differs from its manifest is skipped whole.
All are logged and counted. Webdataset's `warn_and_continue` handler is not used because it
cannot count per kind and sleeps half a second per warning.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_iterator

from ctxf.data.collate import Batch, collate
from ctxf.data.format import Sample, decode_sample
from ctxf.data.sample_checks import SampleMismatchError, SampleShape, exact_dtypes
from ctxf.data.sources import ShardRecord, shard_alteration

logger = logging.getLogger("ctxf.data")

COUNTER_NAMES = ("corrupt_shards", "altered_shards", "corrupt_samples", "mismatched_samples", "short_samples")
MISMATCHES_NAMED = 3  # mismatched samples each reader names per epoch; the rest are only counted


@dataclass(frozen=True)
class StreamSettings:
    """Everything that fixes what a reader yields, besides epoch and reader identity."""

    urls: tuple[str, ...]
    batch_size: int
    max_length: int
    shuffle_buffer: int = 64
    seed: int = 0
    num_frames: int = 0
    drop_last: bool = False
    load_latents: bool = True
    sample_shape: SampleShape = SampleShape()
    # url -> its manifest record, for the shards verified before they are read (empty: none)
    checksums: dict[str, ShardRecord] = field(default_factory=dict, hash=False)


@dataclass
class StreamItem:
    """A batch tagged with the reader that made it; `batch=None` marks the end of a reader's stream."""

    worker: int
    index: int
    counters: dict[str, int] = field(default_factory=dict)
    batch: Batch | None = None


def epoch_shard_order(urls: tuple[str, ...], seed: int, epoch: int, shuffle: bool) -> list[str]:
    if not shuffle:
        return list(urls)
    permutation = np.random.default_rng([seed, epoch]).permutation(len(urls))
    return [urls[i] for i in permutation]


def reader_shards(settings: StreamSettings, epoch: int, rank: int, world_size: int, worker: int,
                  num_workers: int) -> list[str]:
    """The shards reader (rank, worker) reads in `epoch`."""
    order = epoch_shard_order(settings.urls, settings.seed, epoch, settings.shuffle_buffer > 0)
    return order[rank::world_size][worker::num_workers]


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


class _Reader:
    """The generator stages of one reader, sharing its error counters."""

    def __init__(self, settings: StreamSettings, epoch: int, rank: int, world_size: int, worker: int,
                 num_workers: int):
        self.settings, self.epoch = settings, epoch
        self.shards = reader_shards(settings, epoch, rank, world_size, worker, num_workers)
        self.rng_seed = [settings.seed, epoch, rank, world_size, worker, num_workers]
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)

    def raw_samples(self) -> Iterator[dict]:
        for url in self.shards:
            if url in self.settings.checksums and self.altered(url):
                continue
            stream = None
            try:
                stream = wds.gopen(url)
                files = (dict(member, __url__=url) for member in tar_file_iterator(stream))
                yield from group_by_keys(files)
            except Exception as err:  # tarfile, OSError, pipe exit status: all mean "this shard is damaged"
                self.counters["corrupt_shards"] += 1
                logger.warning("skipping the rest of shard %s: %s: %s", url, type(err).__name__, err)
            finally:
                if stream is not None:
                    try:
                        stream.close()
                    except Exception as err:  # a pipe: command's non-zero exit surfaces on close
                        logger.warning("closing shard %s: %s", url, err)

    def altered(self, url: str) -> bool:
        """Whether the shard differs from its manifest (then it is counted and skipped whole).

        The whole file is hashed before its first sample is handed on: a sample read from an
        altered shard must never reach training, and holding a shard's samples until its end
        (up to --max-shard-mb per worker) would cost more memory than reading it twice costs time
        (the second read comes from the page cache). `data.verify_checksums=false` skips this.
        """
        try:
            problem = shard_alteration(url, self.settings.checksums[url])
        except OSError as err:
            problem = f"cannot be read ({err})"
        if problem is None:
            return False
        self.counters["altered_shards"] += 1
        logger.warning("skipping shard %s: %s (altered or damaged; ctxf-check-shards on its manifest lists every "
                       "such shard; write it again)", url, problem)
        return True

    def shuffled(self, samples: Iterator[dict]) -> Iterator[dict]:
        size = self.settings.shuffle_buffer
        if size <= 0:
            return samples
        rng = random.Random(_stable_int(":".join(map(str, self.rng_seed))))
        return wds.shuffle(size, initial=size, rng=rng)(samples)

    def decoded(self, samples: Iterator[dict]) -> Iterator[Sample]:
        for raw in samples:
            try:
                sample = exact_dtypes(decode_sample(raw, load_latents=self.settings.load_latents))
            except SampleMismatchError as err:
                self.mismatched(str(err), raw.get("__url__"))
                continue
            except Exception as err:  # decode_sample names the problem; any failure means a bad sample
                self.counters["corrupt_samples"] += 1
                logger.warning("skipping sample %s from %s: %s", raw.get("__key__"), raw.get("__url__"), err)
                continue
            problem = self.settings.sample_shape.mismatch(sample)
            if problem is not None:
                self.mismatched(f"sample {sample.key}: {problem}", raw.get("__url__"))
                continue
            yield sample

    def mismatched(self, problem: str, url: str | None) -> None:
        """Count a sample that does not fit the model; name the first few of each reader's epoch."""
        self.counters["mismatched_samples"] += 1
        count = self.counters["mismatched_samples"]
        if count <= MISMATCHES_NAMED:
            more = "; further ones in this reader are only counted" if count == MISMATCHES_NAMED else ""
            logger.warning("skipping %s (from %s): it does not fit the configured model; write shards for this "
                           "config or set the config to the shards%s", problem, url, more)

    def cropped(self, samples: Iterator[Sample]) -> Iterator[Sample]:
        """A window of `num_frames` latent frames, its start drawn from (seed, epoch, key)."""
        length = self.settings.num_frames
        for sample in samples:
            start = 0
            if length > 0 and sample.latents is not None:
                available = sample.latents.shape[1]
                if available < length:
                    self.counters["short_samples"] += 1
                    logger.warning("skipping sample %s: %d latent frames, data.num_frames=%d", sample.key,
                                   available, length)
                    continue
                key_seed = _stable_int(sample.key)
                start = int(np.random.default_rng([self.settings.seed, self.epoch, key_seed])
                            .integers(0, available - length + 1))
                sample.latents = sample.latents[:, start:start + length]
            sample.meta = {**sample.meta, "window_start": start}
            yield sample

    def batches(self) -> Iterator[Batch]:
        size = self.settings.batch_size
        group: list[Sample] = []
        for sample in self.cropped(self.decoded(self.shuffled(iter(self.raw_samples())))):
            group.append(sample)
            if len(group) == size:
                yield collate(group, self.settings.max_length)
                group = []
        if group and not self.settings.drop_last:
            yield collate(group, self.settings.max_length)


def reader_items(settings: StreamSettings, epoch: int, rank: int, world_size: int, worker: int,
                 num_workers: int, skip: int = 0) -> Iterator[StreamItem]:
    """Reader (rank, worker)'s items for `epoch`, minus the first `skip`, then an end marker.

    Skipped batches are still read and decoded (so the shuffle buffer and the counters end up
    exactly where an uninterrupted reader's would), but not handed over.
    """
    reader = _Reader(settings, epoch, rank, world_size, worker, num_workers)
    index = 0
    for batch in reader.batches():
        if index >= skip:
            yield StreamItem(worker=worker, index=index, counters=dict(reader.counters), batch=batch)
        index += 1
    if index >= skip:
        yield StreamItem(worker=worker, index=index, counters=dict(reader.counters), batch=None)
