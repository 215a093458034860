"""Acceptance 2: in an epoch every sample is assigned to exactly one (rank, worker), for any split."""

from collections import Counter

import pytest

from ctxf.data.loader import ShardLoader
from ctxf.data.stream import StreamSettings, reader_items
from data_fixtures import write_tiny_shards

SHARD_COUNTS = [3, 1, 4, 1, 5, 2, 6, 2, 3, 5, 1, 4]  # uneven on purpose: 37 samples in 12 shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("coverage"), SHARD_COUNTS)


def epoch_keys(settings, epoch, world_size, num_workers):
    """Keys every simulated reader yields, in reader order."""
    keys = []
    for rank in range(world_size):
        for worker in range(num_workers):
            for item in reader_items(settings, epoch, rank, world_size, worker, num_workers):
                if item.batch is not None:
                    keys.extend(item.batch.keys)
    return keys


@pytest.mark.parametrize("epoch", [0, 1])
def test_every_sample_once_for_world_sizes_1_to_8_and_workers_1_to_4(shards, epoch):
    paths, samples = shards
    settings = StreamSettings(urls=tuple(paths), batch_size=2, max_length=8, shuffle_buffer=4, seed=3)
    for world_size in range(1, 9):
        for num_workers in range(1, 5):
            counts = Counter(epoch_keys(settings, epoch, world_size, num_workers))
            assert set(counts) == set(samples), (world_size, num_workers)
            assert set(counts.values()) == {1}, (world_size, num_workers, counts.most_common(2))


def test_ranks_of_a_real_loader_with_worker_processes_partition_the_epoch(shards):
    paths, samples = shards
    seen = []
    for rank in range(3):
        loader = ShardLoader(paths, batch_size=3, max_length=8, rank=rank, world_size=3, num_workers=2,
                             shuffle_buffer=5, seed=1)
        seen += [key for batch in loader for key in batch.keys]
    assert sorted(seen) == sorted(samples)


def test_order_is_fixed_by_seed_and_epoch_and_changes_between_epochs(shards):
    paths, _ = shards
    settings = StreamSettings(urls=tuple(paths), batch_size=2, max_length=8, shuffle_buffer=8, seed=5)
    first = epoch_keys(settings, 0, 2, 2)
    assert first == epoch_keys(settings, 0, 2, 2)
    assert first != epoch_keys(settings, 1, 2, 2)
    other_seed = StreamSettings(urls=tuple(paths), batch_size=2, max_length=8, shuffle_buffer=8, seed=6)
    assert first != epoch_keys(other_seed, 0, 2, 2)


def test_no_shuffle_reads_shards_and_samples_in_order(shards):
    paths, samples = shards
    loader = ShardLoader(paths, batch_size=4, max_length=8, shuffle_buffer=0)
    assert [key for batch in loader for key in batch.keys] == sorted(samples)


def test_too_few_shards_for_the_ranks_is_an_error(shards):
    paths, _ = shards
    with pytest.raises(ValueError, match="2 shards cannot feed 3 ranks"):
        ShardLoader(paths[:2], batch_size=1, max_length=8, rank=0, world_size=3)
