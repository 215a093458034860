"""The training loader: webdataset shards -> `Batch`es, split across ranks and workers, resumable.

    loader = ShardLoader.from_config(cfg, rank=rank, world_size=world_size)
    for batch in loader.batches():          # endless; `for batch in loader` is one epoch
        ...
        checkpoint["data"] = loader.state_dict()
    loader.load_state_dict(checkpoint["data"])   # on resume, before iterating

How resume is exact. Each reader (this rank's DataLoader worker w) yields a stream of items that
is a pure function of (shards, settings, epoch, rank, world size, w, number of workers)
(`stream.py`). PyTorch's DataLoader (in order, the default) hands items over round-robin across
workers, skipping a worker once its stream has ended. The loader counts, per worker, the items
handed to the caller and remembers which worker gave the last one: that is the position. On
resume, each worker regenerates its stream and drops the items already consumed (shuffle buffer
included, by recomputation: nothing random is saved), and the workers are renumbered so that the
worker due next in the interrupted run becomes worker 0, where the DataLoader's round-robin
starts. The same happens when a loop breaks out of an epoch and iterates again. Each worker ends
its stream with an end marker carrying its error counters (the caller never sees it), so
corrupt shards and samples are counted exactly once even when they come after a worker's last
batch. A resume must keep the shard list, batch size, seed, number of workers, rank and world
size: `load_state_dict` refuses anything else, naming the field.

Ranks can get different numbers of samples when shards hold different counts; the loader is
meant for step-based training that draws from `batches()` without epoch barriers.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ctxf.data.collate import Batch
from ctxf.data.sample_checks import SampleShape
from ctxf.data.sources import ShardSourceError, expand_shards, shard_checksums
from ctxf.data.stream import COUNTER_NAMES, StreamItem, StreamSettings, reader_items

logger = logging.getLogger("ctxf.data")

STATE_VERSION = 1

_warned: set[str] = set()  # warnings already given in this process


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _passthrough(item: StreamItem) -> StreamItem:
    return item


class _EpochDataset(IterableDataset):
    """What each DataLoader worker runs for one pass: its reader's items, resumed and renumbered."""

    def __init__(self, settings: StreamSettings, epoch: int, rank: int, world_size: int, num_readers: int,
                 skip: list[int], first_reader: int):
        super().__init__()
        self.settings, self.epoch, self.rank, self.world_size = settings, epoch, rank, world_size
        self.num_readers, self.skip, self.first_reader = num_readers, skip, first_reader

    def __iter__(self) -> Iterator[StreamItem]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        reader = (physical + self.first_reader) % self.num_readers
        yield from reader_items(self.settings, self.epoch, self.rank, self.world_size, reader,
                                self.num_readers, skip=self.skip[reader])


class ShardLoader:
    """Batches from tar shards for one data-parallel rank (rank and world size given explicitly)."""

    def __init__(self, shards: str | list[str], *, batch_size: int, max_length: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, shuffle_buffer: int = 64, seed: int = 0,
                 num_frames: int = 0, drop_last: bool = False, load_latents: bool = True,
                 sample_shape: SampleShape | None = None, verify_checksums: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        for name, value, least in (("batch_size", batch_size, 1), ("max_length", max_length, 1),
                                   ("num_workers", num_workers, 0), ("shuffle_buffer", shuffle_buffer, 0),
                                   ("seed", seed, 0), ("num_frames", num_frames, 0)):
            if value < least:
                raise ValueError(f"data loader {name}={value} must be >= {least}")
        urls = expand_shards(shards)
        if len(urls) < world_size:
            raise ShardSourceError(f"{len(urls)} shards cannot feed {world_size} ranks (each rank reads whole "
                                   f"shards); write more, smaller shards (--max-shard-samples) or use fewer ranks")
        self.num_readers = max(1, num_workers)
        if len(urls) < world_size * self.num_readers:
            _warn_once(f"{len(urls)} shards for {world_size} ranks x {self.num_readers} workers: some workers will "
                       f"have nothing to read (reported once per process)")
        self.settings = StreamSettings(urls=tuple(urls), batch_size=batch_size, max_length=max_length,
                                       shuffle_buffer=shuffle_buffer, seed=seed, num_frames=num_frames,
                                       drop_last=drop_last, load_latents=load_latents,
                                       sample_shape=sample_shape or SampleShape(),
                                       checksums=shard_checksums(shards) if verify_checksums else {})
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self._totals = dict.fromkeys(COUNTER_NAMES, 0)
        self._generation = 0
        self.set_epoch(0)

    @classmethod
    def from_config(cls, cfg, *, rank: int, world_size: int) -> "ShardLoader":
        """Build from a `ctxf.config.Config` (its `data` section and `text.max_length`)."""
        data = cfg.data
        return cls(data.shards, batch_size=cfg.train.micro_batch_size, max_length=cfg.text.max_length, rank=rank,
                   world_size=world_size, num_workers=data.num_workers, shuffle_buffer=data.shuffle_buffer,
                   seed=data.seed, num_frames=data.num_frames, drop_last=data.drop_last,
                   load_latents=data.load_latents, sample_shape=SampleShape.from_config(cfg),
                   verify_checksums=data.verify_checksums)

    # ------------------------------------------------------------------ position

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (counters of the abandoned epoch are kept)."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        self._epoch = epoch
        self._items = [0] * self.num_readers
        self._last_reader = self.num_readers - 1
        self._epoch_counters = [dict.fromkeys(COUNTER_NAMES, 0) for _ in range(self.num_readers)]
        self._generation += 1

    @property
    def counters(self) -> dict[str, int]:
        """Shards and samples skipped so far, over all epochs, by reason (`stream.COUNTER_NAMES`)."""
        # .get: a state saved before a counter existed lacks its name
        return {name: self._totals.get(name, 0) + sum(c.get(name, 0) for c in self._epoch_counters)
                for name in COUNTER_NAMES}

    def _fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.settings.urls).encode("utf-8")).hexdigest()

    def _identity(self) -> dict:
        return {"shards_sha256": self._fingerprint(), "num_shards": len(self.settings.urls),
                "batch_size": self.settings.batch_size, "seed": self.settings.seed,
                "shuffle_buffer": self.settings.shuffle_buffer, "num_frames": self.settings.num_frames,
                "drop_last": self.settings.drop_last, "load_latents": self.settings.load_latents,
                "num_workers": self.num_workers, "rank": self.rank,
                "world_size": self.world_size}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, **self._identity(), "epoch": self._epoch, "items": list(self._items),
                "last_reader": self._last_reader, "epoch_counters": [dict(c) for c in self._epoch_counters],
                "totals": dict(self._totals)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {state.get('version')!r} is not {STATE_VERSION}")
        for name, value in self._identity().items():
            if state.get(name) != value:
                saved = state.get(name)
                raise ValueError(f"cannot resume the data loader: the checkpoint has {name}={saved!r}, this run "
                                 f"{value!r}; resume with the same data settings (or call set_epoch to start an "
                                 f"epoch afresh)")
        self.set_epoch(state["epoch"])
        self._items = list(state["items"])
        self._last_reader = state["last_reader"]
        self._epoch_counters = [dict(c) for c in state["epoch_counters"]]
        self._totals = dict(state["totals"])

    # ------------------------------------------------------------------ iteration

    def _data_loader(self) -> DataLoader:
        dataset = _EpochDataset(self.settings, self._epoch, self.rank, self.world_size, self.num_readers,
                                skip=list(self._items), first_reader=(self._last_reader + 1) % self.num_readers)
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_passthrough)

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch; when it is exhausted the loader moves to the next epoch."""
        self._generation += 1
        generation = self._generation
        fresh_epoch = not any(self._items)
        num_batches = 0
        for item in self._data_loader():
            if generation != self._generation:
                raise RuntimeError("the data loader was restarted (new iteration, set_epoch or load_state_dict) "
                                   "while this iteration was still running")
            self._items[item.worker] = item.index + 1
            self._last_reader = item.worker
            self._epoch_counters[item.worker] = item.counters
            if item.batch is not None:
                num_batches += 1
                yield item.batch
        if generation != self._generation:
            return
        if fresh_epoch and num_batches == 0:
            raise RuntimeError(f"rank {self.rank} read no batch in epoch {self._epoch} from its "
                               f"{len(self.settings.urls[self.rank::self.world_size])} shards (counters: "
                               f"{self.counters}); check the shards and train.micro_batch_size / data.drop_last")
        self._totals = self.counters
        self.set_epoch(self._epoch + 1)

    def batches(self) -> Iterator[Batch]:
        """Endless: epoch after epoch."""
        while True:
            yield from self
