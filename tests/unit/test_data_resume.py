"""Acceptance 3: a loader restored from its state yields exactly the batches an unstopped one would."""

import json
from itertools import islice

import pytest
import torch

from ctxf.data.loader import ShardLoader
from data_fixtures import write_tiny_shards

SHARD_COUNTS = [5, 2, 7, 3, 1, 6]  # 24 samples; uneven so workers run out at different times


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    paths, samples = write_tiny_shards(root, SHARD_COUNTS, num_frames=8)
    # a damaged shard whose first samples survive: resume must count it once, not twice
    (damaged,), damaged_samples = write_tiny_shards(root / "damaged", [6], num_frames=8, first_index=1000)
    open(damaged, "r+b").truncate(5000)
    return paths + [damaged], {**samples, **damaged_samples}


def make_loader(paths, num_workers):
    return ShardLoader(paths, batch_size=2, max_length=8, num_workers=num_workers, shuffle_buffer=4, seed=11,
                       num_frames=5)


def signature(batch):
    return batch.keys, batch.latents.clone(), batch.text.clone(), [m["window_start"] for m in batch.meta]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for (keys, latents, text, starts), (keys_ref, latents_ref, text_ref, starts_ref) in zip(got, expected):
        assert keys == keys_ref
        assert starts == starts_ref
        assert torch.equal(latents, latents_ref) and torch.equal(text, text_ref)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restored_loader_continues_like_an_uninterrupted_one(shards, num_workers):
    paths, _ = shards
    batches_per_epoch = len(list(make_loader(paths, num_workers)))
    reference = [signature(b) for b in islice(make_loader(paths, num_workers).batches(), 3 * batches_per_epoch)]
    for stop_after in (1, 5, batches_per_epoch - 1, batches_per_epoch, batches_per_epoch + 2):
        stopped = make_loader(paths, num_workers)
        for _ in islice(stopped.batches(), stop_after):
            pass
        state = json.loads(json.dumps(stopped.state_dict()))  # a checkpoint stores it as plain data
        resumed = make_loader(paths, num_workers)
        resumed.load_state_dict(state)
        got = [signature(b) for b in islice(resumed.batches(), 10)]
        assert_same_batches(got, reference[stop_after:stop_after + 10])
        assert resumed.counters == reference_counters_after(paths, num_workers, stop_after + 10)


def reference_counters_after(paths, num_workers, num_batches):
    loader = make_loader(paths, num_workers)
    for _ in islice(loader.batches(), num_batches):
        pass
    return loader.counters


def test_breaking_out_and_iterating_again_continues_where_it_stopped(shards):
    paths, _ = shards
    reference = [signature(b) for b in islice(make_loader(paths, 2).batches(), 12)]
    loader = make_loader(paths, 2)
    got = []
    for batch in loader:
        got.append(signature(batch))
        if len(got) == 4:
            break
    got += [signature(b) for b in islice(loader.batches(), 8)]
    assert_same_batches(got, reference)


def test_the_epoch_advances_and_counts_the_damaged_shard_once_per_epoch(shards):
    paths, samples = shards
    loader = make_loader(paths, 0)
    keys = [key for batch in loader for key in batch.keys]
    assert loader.epoch == 1
    assert loader.counters["corrupt_shards"] == 1
    assert len(keys) == len(set(keys)) and set(keys) <= set(samples)
    assert any(key.startswith("sample-01") for key in keys), "samples before the damage are kept"
    list(loader)
    assert loader.epoch == 2 and loader.counters["corrupt_shards"] == 2


@pytest.mark.parametrize("field, value", [("num_workers", 1), ("seed", 12), ("batch_size", 3)])
def test_resuming_with_other_settings_is_refused_naming_the_field(shards, field, value):
    paths, _ = shards
    state = make_loader(paths, 0).state_dict()
    settings = dict(batch_size=2, max_length=8, num_workers=0, shuffle_buffer=4, seed=11, num_frames=5)
    settings[field] = value
    with pytest.raises(ValueError, match=f"checkpoint has {field}="):
        ShardLoader(paths, **settings).load_state_dict(state)
