"""Acceptance 7: the curtain world's ground truth matches its pixels, and a seed fixes the bytes.

The checks read pixels directly with the colours of docs/benchmarks.md's rules (saturated
sprite, near-grey background, dark curtain with a white bar) rather than through the generator's
own helpers, so a generator that lies about its frames fails here.
"""

import hashlib
import math

import numpy as np
import pytest

from ctxf.config import load_config
from data_pipeline import make_curtain
from data_pipeline.clip_encoding import ClipEncoder
from data_pipeline.curtain import (CURTAIN_COLOUR, PROGRESS_BAR_COLOUR, SHAPES, SPRITE_COLOURS, CurtainSpec,
                                   classify_identity, make_clip, render_background)

SPEC = CurtainSpec(num_frames=80, gap_range=(1, 40))
CLIPS = [(split, index) for split in ("train", "heldout") for index in range(12)]


def saturation(frame):
    pixels = frame.astype(int)
    return pixels.max(-1) - pixels.min(-1)


@pytest.mark.parametrize("split, index", CLIPS)
def test_sprite_and_curtain_are_where_the_metadata_says(split, index):
    clip = make_clip(SPEC, seed=3, split=split, index=index)
    truth, frames = clip.truth, clip.frames
    size = SPEC.frame_size
    height, width = truth.sprite_size
    assert frames.shape == (truth.num_frames, size, size, 3) and frames.dtype == np.uint8
    assert 0.25 <= max(height, width) / size <= 0.4, "sprite spans a quarter to a third of the frame or so"
    assert truth.entry_frame >= 8, "the first two seconds show no sprite"
    assert truth.entry_frame < truth.curtain_start < truth.curtain_start + truth.gap < truth.num_frames
    colour = np.array(list(SPRITE_COLOURS.values())[truth.colour_index], np.uint8)
    background = render_background(truth.background, size)
    for t, frame in enumerate(frames):
        on_curtain = truth.curtain_start <= t < truth.curtain_start + truth.gap
        curtain_pixels = np.all(frame == CURTAIN_COLOUR, axis=-1)
        bar_pixels = np.all(frame == PROGRESS_BAR_COLOUR, axis=-1)
        if on_curtain:
            assert np.all(curtain_pixels | bar_pixels), f"frame {t} is not all curtain"
            bar_width = math.ceil(size * (t - truth.curtain_start + 1) / truth.gap)
            assert bar_pixels[-1].sum() == bar_width and bar_pixels[-1, :bar_width].all()
            assert not bar_pixels[0].any(), "the bar is thin, at the bottom"
            continue
        assert not curtain_pixels.any() and not bar_pixels.any(), f"curtain colour outside the gap, frame {t}"
        sprite_mask = saturation(frame) >= 100
        if t < truth.entry_frame:
            assert truth.sprite_positions[t] is None
            assert np.array_equal(frame, background)
            continue
        top, left = truth.sprite_positions[t]
        expected_mask = np.zeros((size, size), bool)
        expected_mask[top:top + height, left:left + width] = True
        assert np.array_equal(sprite_mask, expected_mask), f"frame {t}: sprite not at {top, left}"
        assert np.all(frame[expected_mask] == colour)
        assert np.array_equal(frame[~expected_mask], background[~expected_mask])
        reading = classify_identity(frame, SPEC.num_shapes)
        assert reading.identity(SPEC.num_shapes) == truth.identity
        assert (reading.top, reading.left) == (top, left)


def test_the_sprite_drifts_slowly_and_keeps_drifting_behind_the_curtain():
    clip = make_clip(SPEC, seed=3, split="train", index=0, gap=30)
    positions = [p for p in clip.truth.sprite_positions if p is not None]
    steps = [abs(a[0] - b[0]) + abs(a[1] - b[1]) for a, b in zip(positions, positions[1:])]
    assert max(steps) <= 2 and sum(steps) > 0
    start = clip.truth.curtain_start
    assert clip.truth.sprite_positions[start - 1] != clip.truth.sprite_positions[start + 30]


def test_splits_share_no_identity_background_pair_but_share_identities_and_backgrounds():
    train, heldout = set(SPEC.combinations("train")), set(SPEC.combinations("heldout"))
    assert not train & heldout
    assert len(train | heldout) == SPEC.num_identities * SPEC.num_backgrounds
    for pairs in (train, heldout):
        assert {i for i, _ in pairs} == set(range(SPEC.num_identities))
        assert {b for _, b in pairs} == set(range(SPEC.num_backgrounds))
    drawn = {(c.truth.identity, c.truth.background)
             for c in (make_clip(SPEC, 0, "heldout", i) for i in range(30))}
    assert drawn <= heldout
    with pytest.raises(ValueError, match="belongs to the train split"):
        make_clip(SPEC, 0, "heldout", 0, identity=1, background=0)


def test_background_colours_never_collide_with_sprite_or_curtain_colours():
    sprite = {tuple(c) for c in SPRITE_COLOURS.values()}
    for background in range(SPEC.num_backgrounds):
        texture = render_background(background, SPEC.frame_size)
        colours = {tuple(c) for c in texture.reshape(-1, 3)}
        assert len(colours) == 2
        assert not colours & (sprite | {CURTAIN_COLOUR, PROGRESS_BAR_COLOUR})
        assert saturation(texture).max() <= 40


def test_identity_classifier_reads_every_identity_and_tolerates_noise():
    rng = np.random.default_rng(0)
    for identity in range(SPEC.num_identities):
        combos = [pair for pair in SPEC.combinations("train") if pair[0] == identity]
        clip = make_clip(SPEC, 1, "train", identity, identity=identity, background=combos[0][1])
        frame = clip.frames[clip.truth.curtain_start - 1].astype(int)
        noisy = np.clip(frame + rng.normal(0, 12, frame.shape), 0, 255).astype(np.uint8)
        assert classify_identity(noisy).identity(len(SHAPES)) == identity
        assert classify_identity(clip.frames[clip.truth.curtain_start]) is None


def test_forced_gap_longer_than_the_clip_lengthens_it():
    clip = make_clip(SPEC, 0, "heldout", 5, gap=128)
    truth = clip.truth
    assert truth.gap == 128 and truth.num_frames == truth.curtain_start + 128 + SPEC.min_after
    assert len(clip.frames) == truth.num_frames


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    def shard_digests(seed, name):
        out = tmp_path / name
        make_curtain.write_split(SPEC, seed, "train", 5, out, ClipEncoder(load_config("tiny")), max_samples=3)
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))]

    assert shard_digests(4, "a") == shard_digests(4, "b")
    assert shard_digests(4, "a2") != shard_digests(5, "c")
    assert np.array_equal(make_clip(SPEC, 4, "train", 2).frames, make_clip(SPEC, 4, "train", 2).frames)


def test_cli_writes_both_splits_with_a_summary(tmp_path, capsys):
    status = make_curtain.main(["--out", str(tmp_path), "--train-clips", "3", "--heldout-clips", "2",
                                "--max-gap", "8", "--previews", "1"])
    assert status == 0
    assert len(list((tmp_path / "train").glob("shard-*.tar"))) == 1
    assert (tmp_path / "heldout" / "manifest.json").is_file()
    output = capsys.readouterr().out
    assert "3 clips in 1 shards" in output and "2 clips in 1 shards" in output


def test_a_fitted_world_is_exactly_as_long_as_its_longest_timeline():
    # entry at most 16 + visible at most 16 + gap at most 8 + 5 frames after the reopening
    spec = CurtainSpec.fitted(gap_range=(1, 8), min_after=5, frame_size=16)
    assert spec.num_frames == 16 + 16 + 8 + 5 and spec.gap_range == (1, 8) and spec.min_after == 5
    with pytest.raises(ValueError, match="cannot hold the longest timeline"):
        CurtainSpec(gap_range=(1, 8), min_after=5, num_frames=44)
