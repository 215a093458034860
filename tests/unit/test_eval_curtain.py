"""Acceptance 1 of the memory experiment: the curtain harness recovers known answers on controls.

The scripted models below stand behind the same `continue_video` interface as a real checkpoint.
Their answers are known without the harness: the true continuation scores 1 at every gap; a model
whose memory is a window of W frames remembers the sprite only while the last pre-curtain frame is
inside that window (gap < W) and guesses otherwise; a model that draws the next identity of the
library is read as exactly that identity; and in the swapped-context control a perfect-memory model
is right exactly when the two clips happen to share an identity.
"""

import numpy as np
import pytest

from ctxf.eval.curtain import PSNR_IDENTICAL_DB, GapResult, background_psnr, effective_context, evaluate, make_case
from data_pipeline.curtain import LATENT_FRAME_SECONDS, SPRITE_COLOURS, CurtainSpec, make_clip, render_background

SPEC = CurtainSpec(gap_range=(1, 32), num_frames=72, min_after=4)
SEED = 5
NUM_CLIPS = 24
SCORE_FRAMES = 4
GAPS = [0, 1, 2, 4, 8]  # seconds: 0, 4, 8, 16, 32 frames


class TrueContinuation:
    """Returns the world's own next frames for whatever clip's prefix it is given."""

    def __init__(self):
        self.table = {}
        for gap in GAPS:
            frames = round(gap / LATENT_FRAME_SECONDS)
            for index in range(NUM_CLIPS):
                case = make_case(SPEC, SEED, index, frames, SCORE_FRAMES)
                self.table[(case.prefix.tobytes(), case.continuation.shape[0])] = case
        self.calls = 0

    def case(self, prefix, num_frames):
        return self.table[(prefix.tobytes(), num_frames)]

    def continue_video(self, prefix, num_frames, prompt):
        self.calls += 1
        return self.case(prefix, num_frames).continuation.copy()


def redraw_sprite(frames, case, identity):
    """`frames` (the continuation, from the reopening on) with the true sprite replaced by one of
    `identity` at the true position."""
    truth = case.truth
    out = frames.copy()
    background = render_background(truth.background, SPEC.frame_size)
    colour = list(SPRITE_COLOURS.values())[identity // SPEC.num_shapes]
    height, width = SPEC.sprite_size(identity % SPEC.num_shapes)
    for offset in range(frames.shape[0]):
        top, left = truth.sprite_positions[case.first_frame + offset]
        old_h, old_w = truth.sprite_size
        out[offset, top:top + old_h, left:left + old_w] = background[top:top + old_h, left:left + old_w]
        top, left = min(top, SPEC.frame_size - height), min(left, SPEC.frame_size - width)
        out[offset, top:top + height, left:left + width] = colour
    return out


class WrongIdentity(TrueContinuation):
    """The true continuation with the next identity of the library drawn after the curtain."""

    def continue_video(self, prefix, num_frames, prompt):
        case = self.case(prefix, num_frames)
        wrong = (case.truth.identity + 1) % SPEC.num_identities
        return redraw_sprite(case.continuation, case, wrong)


class WindowMemory(TrueContinuation):
    """Remembers only the last `window` frames: after a gap of `window` or more curtain frames it has
    seen no sprite and draws a guessed identity (uniform over the library, from a fixed seed)."""

    def __init__(self, window):
        super().__init__()
        self.window = window
        self.rng = np.random.default_rng(0)

    def continue_video(self, prefix, num_frames, prompt):
        case = self.case(prefix, num_frames)
        if case.gap_frames < self.window:
            return case.continuation.copy()
        guess = int(self.rng.integers(SPEC.num_identities))
        return redraw_sprite(case.continuation, case, guess)


def identities():
    return [make_clip(SPEC, SEED, "heldout", index).truth.identity for index in range(NUM_CLIPS)]


def run(model, **kwargs):
    return evaluate(model, SPEC, SEED, NUM_CLIPS, GAPS, SCORE_FRAMES, progress=False, **kwargs)


def test_true_continuations_score_the_ceiling_at_every_gap():
    model = TrueContinuation()
    report = run(model)
    assert model.calls == 2 * NUM_CLIPS * len(GAPS), "every clip at every gap, and its control"
    for gap in report["gaps"]:
        assert gap["recall"] == 1.0 and gap["colour_recall"] == 1.0, gap["gap_seconds"]
        assert gap["background_psnr"] == PSNR_IDENTICAL_DB
        for clip in gap["clips"]:
            first_open = clip["scored_frames"][0]
            truth = make_case(SPEC, SEED, clip["index"], gap["gap_frames"], SCORE_FRAMES).truth
            assert first_open == truth.curtain_start + gap["gap_frames"], "read only once the curtain is open"
            assert len(clip["scored_frames"]) == SCORE_FRAMES
    assert report["ceiling"] == 1.0
    assert report["effective_context_seconds"] == max(GAPS)
    assert report["colour"]["effective_context_seconds"] == max(GAPS) and report["colour"]["chance"] < 1.0


def test_swapped_context_control_scores_chance():
    report = run(TrueContinuation())
    ids = identities()
    for gap in report["gaps"]:
        partners = [clip["context_from"] for clip in gap["control_clips"]]
        assert all(p != i for i, p in enumerate(partners)), "the control always sees another clip's context"
        same = np.mean([ids[p] == ids[i] for i, p in enumerate(partners)])
        assert gap["control_recall"] == pytest.approx(same)
        assert gap["control_recall"] <= 0.25, "a perfect memory of the wrong clip is right only by coincidence"
        same_colour = np.mean([ids[p] // SPEC.num_shapes == ids[i] // SPEC.num_shapes for i, p in enumerate(partners)])
        assert gap["control_colour_recall"] == pytest.approx(same_colour)
    assert report["chance"]["level"] == pytest.approx(np.mean([g["control_recall"] for g in report["gaps"]]))
    assert report["chance"]["uniform"] == pytest.approx(1 / 24)


def test_memory_shorter_than_the_gap_scores_chance():
    window = 10  # frames = 2.5 s: remembers across the 1 s and 2 s gaps, not the 4 s and 8 s ones
    report = run(WindowMemory(window), chance="uniform")
    by_gap = {g["gap_seconds"]: g["recall"] for g in report["gaps"]}
    assert by_gap[0] == by_gap[1] == by_gap[2] == 1.0
    chance, sigma = 1 / 24, np.sqrt((1 / 24) * (23 / 24) / NUM_CLIPS)
    for gap in (4, 8):
        assert by_gap[gap] <= chance + 3 * sigma, f"{gap} s: no memory cannot beat chance"
    assert report["effective_context_seconds"] == 2


def test_wrong_identity_is_scored_wrong_not_abstained():
    report = run(WrongIdentity(), control=False, chance="uniform")
    # the next identity of the library keeps the colour unless the shape wraps (identity = colour * shapes + shape)
    same_colour = np.mean([(i + 1) // SPEC.num_shapes == i // SPEC.num_shapes for i in identities()])
    for gap in report["gaps"]:
        assert gap["recall"] == 0.0
        assert gap["colour_recall"] == pytest.approx(same_colour), "the lenient colour reader sees the colour only"
        for clip in gap["clips"]:
            assert clip["read"] == [(clip["identity"] + 1) % SPEC.num_identities] * SCORE_FRAMES


def test_background_psnr_by_hand():
    case = make_case(SPEC, SEED, 0, 4, SCORE_FRAMES)
    frame_index = case.truth.curtain_start + 4 + 1  # the second frame after a 4-frame curtain
    assert (case.prefix.shape[0], case.first_frame) == (case.truth.curtain_start + 4, frame_index - 1)
    frame = case.continuation[1].astype(np.int64)
    top, left = case.truth.sprite_positions[frame_index]
    height, width = case.truth.sprite_size
    sprite = np.zeros(frame.shape[:2], bool)
    sprite[top:top + height, left:left + width] = True
    frame[~sprite] += np.where(frame[~sprite] > 128, -10, 10)  # every wall pixel off by 10 levels
    frame[sprite] = 0  # the sprite box is not part of the background score
    expected = 10 * np.log10(255 ** 2 / 100)
    assert background_psnr(frame.astype(np.uint8), case.truth, frame_index, SPEC) == pytest.approx(expected)


def test_effective_context_is_where_recall_first_drops_below_the_midpoint():
    gaps = [GapResult(gap_seconds=s, gap_frames=4 * s, recall=r, background_psnr=0.0, control_recall=0.1)
            for s, r in ((0, 0.9), (1, 0.8), (2, 0.5), (4, 0.3), (8, 0.6))]
    effective, midpoint = effective_context(gaps, chance=0.1)
    assert midpoint == pytest.approx(0.5)
    assert effective == 2, "stays at or above 0.5 up to 2 s; the later rebound at 8 s does not count"
    blind = [GapResult(gap_seconds=s, gap_frames=4 * s, recall=0.0, background_psnr=0.0, control_recall=0.0)
             for s in (0, 1, 2)]
    assert effective_context(blind, chance=0.0)[0] is None, "a model that recalls nothing at G = 0 has no length"
    # the same rule on colour recall: ceiling 0.8, chance 0.2, midpoint 0.5; 0.5 at 1 s holds, 0.4 at 2 s drops
    colours = [GapResult(gap_seconds=s, gap_frames=4 * s, recall=0.0, background_psnr=0.0, control_recall=0.0,
                         colour_recall=c) for s, c in ((0, 0.8), (1, 0.5), (2, 0.4), (4, 0.7))]
    assert effective_context(colours, chance=0.2, key="colour_recall") == (1, pytest.approx(0.5))
    assert effective_context(colours, chance=0.2)[0] is None


@pytest.mark.parametrize("settings, message", [
    (dict(num_clips=1), "at least 2"), (dict(gaps=[0, 0.1]), "distinct"), (dict(gaps=[]), "at least one"),
    (dict(control=False), "needs the control")])
def test_bad_settings_fail_before_any_generation(settings, message):
    model = TrueContinuation()
    kwargs = dict(num_clips=NUM_CLIPS, gaps=GAPS, control=True)
    kwargs.update(settings)
    with pytest.raises(ValueError, match=message):
        evaluate(model, SPEC, SEED, kwargs["num_clips"], kwargs["gaps"], SCORE_FRAMES, control=kwargs["control"],
                 progress=False)
    assert model.calls == 0
