"""Acceptance 4: damaged shards and samples are skipped and counted; shard sources fail clearly."""

import io
import tarfile

import pytest

from ctxf.data.loader import ShardLoader
from ctxf.data.sources import ShardSourceError, expand_shards
from data_fixtures import write_tiny_shards


def replace_member(path, member_name, payload):
    """Rewrite a tar with one member's bytes replaced (standard library only)."""
    with tarfile.open(path) as archive:
        members = [(info, archive.extractfile(info).read()) for info in archive]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for info, data in members:
            if info.name == member_name:
                data = payload
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def damaged_shards(tmp_path):
    paths, samples = write_tiny_shards(tmp_path / "good", [4, 3, 5])
    bad_array, _ = write_tiny_shards(tmp_path / "bad_array", [3], first_index=100)
    replace_member(bad_array[0], "sample-00101.latents.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    bad_json, _ = write_tiny_shards(tmp_path / "bad_json", [2], first_index=200)
    replace_member(bad_json[0], "sample-00200.json", b"{broken")
    truncated, _ = write_tiny_shards(tmp_path / "truncated", [4], first_index=300)
    with open(truncated[0], "r+b") as handle:  # keeps sample 300 (3 members of 1 KiB), cuts 301 mid-member
        handle.truncate(3 * 1024 + 700)
    cut_between, _ = write_tiny_shards(tmp_path / "cut_between", [4], first_index=400)
    with open(cut_between[0], "r+b") as handle:  # a clean tar end after 401's .json: 401 lacks its arrays
        handle.truncate(4 * 1024)
    not_a_tar = tmp_path / "noise.tar"
    not_a_tar.write_bytes(b"this is not a tar archive" * 40)
    expected = set(samples) | {"sample-00100", "sample-00102", "sample-00201", "sample-00300", "sample-00400"}
    all_paths = [paths[0], bad_array[0], paths[1], truncated[0], bad_json[0], str(not_a_tar), cut_between[0],
                 paths[2]]
    return all_paths, expected


@pytest.mark.parametrize("num_workers", [0, 2])
def test_damage_is_skipped_counted_and_the_rest_of_the_epoch_is_intact(damaged_shards, num_workers, caplog):
    paths, expected = damaged_shards
    loader = ShardLoader(paths, batch_size=2, max_length=8, num_workers=num_workers, shuffle_buffer=3, seed=0)
    keys = [key for batch in loader for key in batch.keys]
    assert sorted(keys) == sorted(expected)
    assert loader.counters == {"corrupt_shards": 2, "altered_shards": 0, "corrupt_samples": 3,
                               "mismatched_samples": 0, "short_samples": 0}
    if num_workers == 0:
        warned = caplog.text
        assert "truncated" in warned and "noise.tar" in warned and "sample-00101" in warned


def test_clips_shorter_than_the_window_are_skipped_and_counted(tmp_path):
    long_paths, long_samples = write_tiny_shards(tmp_path / "long", [3], num_frames=8)
    short_paths, _ = write_tiny_shards(tmp_path / "short", [2], num_frames=4, first_index=50)
    loader = ShardLoader(long_paths + short_paths, batch_size=1, max_length=8, num_frames=6)
    batches = list(loader)
    assert sorted(key for b in batches for key in b.keys) == sorted(long_samples)
    assert loader.counters["short_samples"] == 2
    for batch in batches:  # the window holds frames start .. start+5 of the sample encoded in its values
        index = long_samples[batch.keys[0]]["index"]
        start = batch.meta[0]["window_start"]
        assert 0 <= start <= 2
        assert batch.latents[0, 0, :, 0, 0].tolist() == pytest.approx([index + (start + f) / 100 for f in range(6)])


def test_a_failing_pipe_command_counts_as_a_damaged_shard(tmp_path):
    paths, samples = write_tiny_shards(tmp_path, [3])
    loader = ShardLoader([f"pipe:cat {paths[0]}", f"pipe:cat {tmp_path}/missing.tar"], batch_size=2, max_length=8)
    assert sorted(key for batch in loader for key in batch.keys) == sorted(samples)
    assert loader.counters["corrupt_shards"] == 1


def test_sources_paths_braces_pipes_and_manifests_expand(tmp_path):
    paths, _ = write_tiny_shards(tmp_path, [1, 1, 1])
    pattern = str(tmp_path / "shard-{000000..000002}.tar")
    assert expand_shards(pattern) == paths
    assert expand_shards(str(tmp_path / "manifest.json")) == paths
    assert expand_shards([paths[0], f"pipe:cat {paths[1]}"]) == [paths[0], f"pipe:cat {paths[1]}"]
    assert expand_shards(f"{paths[0]}::{paths[2]}") == [paths[0], paths[2]]


@pytest.mark.parametrize("sources, message", [
    ("", "shard list is empty"),
    ([], "shard list is empty"),
    ("{tmp}/shard-{{000000..000003}}.tar", "1 of 4 shards do not exist, first: .*shard-000003.tar"),
    ("{tmp}", "is a directory"),
    ("{tmp}/nothing/manifest.json", "manifest .* does not exist"),
    (["{tmp}/shard-000000.tar", "{tmp}/shard-000000.tar"], "listed more than once"),
])
def test_bad_shard_lists_are_clear_errors(tmp_path, sources, message):
    write_tiny_shards(tmp_path, [1, 1, 1])
    if isinstance(sources, str):
        sources = sources.format(tmp=tmp_path)
    else:
        sources = [s.format(tmp=tmp_path) for s in sources]
    with pytest.raises(ShardSourceError, match=message):
        ShardLoader(sources, batch_size=1, max_length=8)
