"""Sequence shards: equal lengths by padding, padding invisible as keys, pure (no processes)."""

from __future__ import annotations

import pytest
import torch

from ctxf.models.attention import PADDING_BLOCK, BlockMask
from ctxf.parallel.plan import SequenceLengthError
from ctxf.parallel.sharding import SequenceShard


@pytest.mark.parametrize("length, degree", [(12, 4), (13, 4), (5, 4), (27, 2)])
def test_shards_cover_the_sequence_once_and_pad_the_last(length, degree):
    shards = [SequenceShard.of(length, degree, rank) for rank in range(degree)]
    assert len({s.shard_length for s in shards}) == 1
    real = torch.cat([s.positions()[~s.padding()] for s in shards])
    assert real.tolist() == list(range(length))
    assert sum(int(s.padding().sum()) for s in shards) == degree * shards[0].shard_length - length


def test_padding_keys_are_invisible_and_padding_queries_see_something():
    shards = [SequenceShard.of(5, 4, rank) for rank in range(4)]
    blocks = torch.cat([s.block_ids(torch.tensor([0, 0, 1, 1, 2])) for s in shards])
    assert (blocks == PADDING_BLOCK).sum() == 3
    visible = BlockMask(blocks, blocks).dense()
    real = blocks != PADDING_BLOCK
    assert not visible[real][:, ~real].any(), "a real query sees a padded key"
    assert visible.any(dim=1).all(), "a query sees no key at all: its softmax would be NaN"


def test_bidirectional_shard_gets_block_zero():
    shard = SequenceShard.of(3, 2, 1)
    assert shard.block_ids(None).tolist() == [0, PADDING_BLOCK]


def test_take_repeats_the_last_token_for_padding():
    x = torch.arange(10.0).reshape(1, 5, 2)
    assert SequenceShard.of(5, 2, 1).take(x).tolist() == [[[6.0, 7.0], [8.0, 9.0], [8.0, 9.0]]]


def test_padding_off_refuses_an_uneven_sequence():
    with pytest.raises(SequenceLengthError, match="parallel.pad_sequence=true"):
        SequenceShard.of(13, 4, 0, pad_sequence=False)
    assert SequenceShard.of(12, 4, 3, pad_sequence=False).shard_length == 3
