"""Memory policies on hand-made keys (acceptance 5) and their bookkeeping.

Keys are built so each frame's mean key points in a chosen direction and its values encode the
frame's absolute index, so a test can read back which frames the cache holds and in what order.
"""

import pytest
import torch

from ctxf.config import load_config
from ctxf.memory.cache import KVMemory
from ctxf.memory.policies import build_policy

TOKENS, HEADS, DIM = 2, 1, 4
DIRECTIONS = {name: torch.eye(DIM)[i] for i, name in enumerate("abcd")}


def memory_for(policy, **sizes):
    overrides = [f"memory.policy={policy}", "video.num_frames_per_block=1"]
    overrides += [f"memory.{key}={value}" for key, value in sizes.items()]
    cfg = load_config("tiny", overrides)
    return KVMemory(build_policy(cfg.memory), num_layers=1, max_append_frames=1)


def frame_kv(index: int, direction: str):
    """One frame: keys along `direction` (plus a little noise), values filled with its index."""
    keys = DIRECTIONS[direction].repeat(1, TOKENS, HEADS, 1) + 0.01 * torch.randn(1, TOKENS, HEADS, DIM)
    values = torch.full((1, TOKENS, HEADS, DIM), float(index))
    return [(keys, values)]


def stored_indices(memory: KVMemory) -> list[int]:
    """Frame indices read back from the cached values (not from the bookkeeping)."""
    _, values = memory.store.layer(0)
    return values[0, ::TOKENS, 0, 0].long().tolist()


def feed(memory: KVMemory, directions: str):
    for direction in directions:
        memory.append(frame_kv(memory.num_frames_seen, direction), 1)


def test_surprising_frame_kept_redundant_dropped_oldest_evicted_sink_kept():
    memory = memory_for("slow_fast", num_sink_frames=1, num_fast_frames=1, num_slow_frames=2,
                        surprise_threshold=0.95, rope_length=8)
    # frame:   0 (sink) 1  2  3  4  5  6
    feed(memory, "a" + "b" + "b" + "b" + "c" + "d" + "a")
    # 1 leaves the fast window first: no keyframe yet, kept. 2 and 3 repeat b: dropped.
    # 4 (c) and 5 (d) are surprising: kept; slow then holds 3 > 2, so the oldest (1) is evicted.
    assert memory.frame_indices == [0, 4, 5, 6]
    assert memory.segments == ["sink", "slow", "slow", "fast"]
    assert stored_indices(memory) == [0, 4, 5, 6]
    feed(memory, "bcdabcdabcd")
    assert memory.frame_indices[0] == 0 and memory.segments[0] == "sink"
    assert stored_indices(memory) == memory.frame_indices


def test_threshold_decides_against_last_keyframe_only():
    memory = memory_for("slow_fast", num_sink_frames=0, num_fast_frames=1, num_slow_frames=4,
                        surprise_threshold=0.95, rope_length=8)
    feed(memory, "abab" + "a")
    # every frame differs from the keyframe before it, so all four leave the fast window as keyframes
    assert memory.frame_indices == [0, 1, 2, 3, 4]
    memory.reset()
    assert memory.frame_indices == [] and memory.cache_bytes() == 0
    feed(memory, "aaaa" + "a")
    assert memory.frame_indices == [0, 4]


def test_uniform_keyframes_keep_every_nth():
    memory = memory_for("uniform", num_sink_frames=1, num_fast_frames=2, num_slow_frames=3,
                        uniform_stride=3, rope_length=8)
    feed(memory, "a" * 15)
    # frames 1..12 left the fast window; (index - 1) % 3 == 0 keeps 1, 4, 7, 10; slow holds the last 3
    assert memory.frame_indices == [0, 4, 7, 10, 13, 14]
    assert stored_indices(memory) == memory.frame_indices


@pytest.mark.parametrize("policy, sizes, expected", [
    ("rolling", {"window_frames": 3}, [7, 8, 9]),
    ("sink_local", {"num_sink_frames": 2, "window_frames": 3}, [0, 1, 7, 8, 9]),
    ("infinity_rope", {"num_sink_frames": 1, "window_frames": 3, "rope_length": 5}, [0, 7, 8, 9]),
    ("full", {}, list(range(10))),
])
def test_window_policies_keep_expected_frames(policy, sizes, expected):
    memory = memory_for(policy, **sizes)
    feed(memory, "abcdabcdab")
    assert memory.frame_indices == expected
    assert stored_indices(memory) == expected


def test_positions_absolute_vs_bounded():
    rolling = memory_for("rolling", window_frames=3)
    feed(rolling, "abcdabcdab")
    view = rolling.view(1)
    assert view.key_frame_positions.tolist() == [7, 8, 9]
    assert view.query_frame_positions.tolist() == [10]

    bounded = memory_for("infinity_rope", num_sink_frames=1, window_frames=3, rope_length=5)
    feed(bounded, "abc")
    # nothing evicted yet: bounded positions equal absolute ones
    assert bounded.view(1).key_frame_positions.tolist() == [0, 1, 2]
    assert bounded.view(1).query_frame_positions.tolist() == [3]
    feed(bounded, "dabcdab")
    view = bounded.view(1)
    # sink at 0, window contiguous right before the anchor min(10, 5 - 1) = 4
    assert view.key_frame_positions.tolist() == [0, 1, 2, 3]
    assert view.query_frame_positions.tolist() == [4]


def test_view_is_a_slice_of_the_store_not_a_copy():
    memory = memory_for("full")
    feed(memory, "abc")
    view = memory.view(1)
    assert view.keys[0].data_ptr() == memory.store.buffer[0, 0].data_ptr()
    assert view.keys[0].shape == (1, 3 * TOKENS, HEADS, DIM)
