"""Two curtain reports compared clip by clip (ctxf.eval.paired), on hand-made reports."""

from __future__ import annotations

import pytest

from ctxf.eval.paired import paired_gaps


def _report(scores_per_gap: list[list[float]], indices: list[int] | None = None) -> dict:
    return {"gaps": [{"gap_seconds": float(g), "clips": [{"index": i, "colour_recall": score}
                                                         for i, score in zip(indices or range(len(scores)), scores)]}
                     for g, scores in enumerate(scores_per_gap)]}


def test_difference_counts_and_interval_per_gap():
    first = _report([[1.0, 0.0, 2.0], [0.75, 0.75, 0.75]])
    second = _report([[0.0, 1.0, 0.0], [0.25, 0.25, 0.25]])
    uneven, constant = paired_gaps(first, second, "colour_recall")
    # differences 1, -1, 2: mean 2/3, two clips higher, one lower
    assert uneven["mean"] == pytest.approx(2 / 3)
    assert (uneven["clips_higher"], uneven["clips_lower"], uneven["clips"]) == (2, 1, 3)
    # a bootstrap mean lies between the smallest and largest difference, and the interval holds the mean
    assert -1.0 <= uneven["low"] < uneven["mean"] < uneven["high"] <= 2.0
    # every clip 0.5 higher: every resample's mean is 0.5
    assert (constant["mean"], constant["low"], constant["high"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (constant["clips_higher"], constant["clips_lower"]) == (3, 0)
    assert paired_gaps(first, second, "colour_recall") == [uneven, constant]  # seeded


def test_reports_of_different_clips_or_gaps_are_refused():
    with pytest.raises(ValueError, match="different clips"):
        paired_gaps(_report([[1.0, 0.0]]), _report([[1.0, 0.0]], indices=[0, 2]), "colour_recall")
    with pytest.raises(ValueError, match="different gap grids"):
        paired_gaps(_report([[1.0], [1.0]]), _report([[1.0]]), "colour_recall")
