"""Two curtain reports compared clip by clip: both models continued the same held-out clips, so the
difference per clip removes what the clips themselves make easy or hard.

    paired_gaps(report_c, report_b, "colour_recall")  # per gap: mean difference, 95% interval, clips up / down

The interval is a percentile bootstrap over clips (clips drawn with replacement, seeded), the count a
sign test's raw material: clips where the first model scored higher, and lower.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 4000


def clip_scores(gap: dict, key: str) -> tuple[list[int], np.ndarray]:
    """The clip indices of one gap of a report and each clip's `key` (colour_recall, recall, background_psnr)."""
    return [clip["index"] for clip in gap["clips"]], np.array([clip[key] for clip in gap["clips"]], dtype=float)


def paired_gaps(first: dict, second: dict, key: str, seed: int = 0) -> list[dict]:
    """Per gap: `first`'s clip scores minus `second`'s, as mean, 95% bootstrap interval and the number of
    clips where the difference is above and below zero. Both reports must hold the same gaps and clips."""
    if [g["gap_seconds"] for g in first["gaps"]] != [g["gap_seconds"] for g in second["gaps"]]:
        raise ValueError("the two reports hold different gap grids; evaluate both with the same --gaps")
    rng = np.random.default_rng(seed)
    out = []
    for gap_a, gap_b in zip(first["gaps"], second["gaps"]):
        clips_a, scores_a = clip_scores(gap_a, key)
        clips_b, scores_b = clip_scores(gap_b, key)
        if clips_a != clips_b:
            raise ValueError(f"gap {gap_a['gap_seconds']:g} s: the reports scored different clips ({clips_a} and "
                             f"{clips_b}); evaluate both with the same --seed and --clips")
        difference = scores_a - scores_b
        means = difference[rng.integers(0, len(difference), (RESAMPLES, len(difference)))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        out.append({"gap_seconds": gap_a["gap_seconds"], "mean": float(difference.mean()), "low": float(low),
                    "high": float(high), "clips_higher": int((difference > 0).sum()),
                    "clips_lower": int((difference < 0).sum()), "clips": len(difference)})
    return out
