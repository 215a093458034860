"""A strict reader of the curtain world's sprite in generated frames.

`data_pipeline.curtain.classify_identity` reads (colour, shape) from any frame; it is generous on
purpose (it always names the nearest library entry). Scoring a model with it alone would reward
hedging: a faint ghost, two sprites at once or a colour halfway between two palette colours all
get a name. `read_sprite` first asks `classify_identity`, then abstains unless what it read is one
clean sprite of one palette identity:
- its saturated pixels mostly fill one box (two sprites make a box with a hole);
- the box is about the size of the library shape read (not a blob much larger or smaller);
- its core has the hue of the palette colour read and most of its saturation (a halfway colour has
  another hue, a ghost too little saturation);
- the rest of the frame is unsaturated (no second, smaller sprite beside it).
An abstention is `None`, and the harness counts it as wrong.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.curtain import SATURATION_THRESHOLD, SPRITE_COLOURS, CurtainSpec, classify_identity

MIN_BOX_FILL = 0.75  # sprite pixels / bounding-box area
SIZE_TOLERANCE = 0.5  # box height and width within this fraction (and at least 1 pixel) of the library size
MAX_HUE_DISTANCE = 0.15  # between hue vectors; the closest palette pair (red, orange) is 0.5 apart
MIN_SATURATION_KEPT = 0.55  # of the palette colour's saturation (max - min channel)
MAX_STRAY_FRACTION = 0.1  # saturated pixels outside the box / pixels inside it


def read_sprite(frame: np.ndarray, spec: CurtainSpec) -> int | None:
    """The identity index of the one clean sprite in a `[H, W, 3]` uint8 frame, or None (abstain)."""
    reading = classify_identity(frame, spec.num_shapes)
    if reading is None:
        return None
    pixels = np.asarray(frame).astype(np.float64)
    saturated = pixels.max(axis=-1) - pixels.min(axis=-1) >= SATURATION_THRESHOLD
    box = np.zeros_like(saturated)
    box[reading.top:reading.top + reading.height, reading.left:reading.left + reading.width] = True
    inside = saturated & box
    if inside.sum() < MIN_BOX_FILL * box.sum():
        return None
    if (saturated & ~box).sum() > MAX_STRAY_FRACTION * inside.sum():
        return None
    expected_height, expected_width = spec.sprite_size(reading.shape_index)
    for got, expected in ((reading.height, expected_height), (reading.width, expected_width)):
        if abs(got - expected) > max(1.0, SIZE_TOLERANCE * expected):
            return None
    # the sprite's core (its most saturated quarter) must have the palette colour's hue and most of its
    # saturation: blur mixes a thin sprite with the near-grey wall, which keeps the hue and lowers the
    # saturation a little; a ghost keeps the hue but little saturation; a halfway colour has a hue of its own
    saturation = (pixels.max(axis=-1) - pixels.min(axis=-1))[inside]
    core = pixels[inside][saturation >= np.quantile(saturation, 0.75)].mean(axis=0)
    colour = np.array(list(SPRITE_COLOURS.values())[reading.colour_index], np.float64)
    if np.linalg.norm(hue(core) - hue(colour)) > MAX_HUE_DISTANCE:
        return None
    if np.ptp(core) < MIN_SATURATION_KEPT * np.ptp(colour):
        return None
    return reading.identity(spec.num_shapes)


def hue(rgb: np.ndarray) -> np.ndarray:
    """An RGB colour with its grey part removed and its saturation scaled to 1 (a mix with grey keeps it)."""
    return (rgb - rgb.min()) / max(float(np.ptp(rgb)), 1e-6)
