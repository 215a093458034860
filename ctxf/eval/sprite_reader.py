"""A strict reader of the curtain world's sprite in generated frames.

`data_pipeline.curtain.classify_identity` reads (colour, shape) from any frame; it is generous on
purpose (it always names the nearest library entry). Scoring a model with it alone would reward
hedging: a faint ghost, two sprites at once or a colour halfway between two palette colours all
get a name. `read_sprite` first asks `classify_identity`, then abstains unless what it read is one
clean sprite of one palette identity:
- its saturated pixels mostly fill one box (two sprites make a box with a hole);
- the box is about the size of the library shape read (not a blob much larger or smaller);
- those pixels are near the palette colour read (a halfway colour or a ghost is far from both);
- the rest of the frame is unsaturated (no second, smaller sprite beside it).
An abstention is `None`, and the harness counts it as wrong.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.curtain import SATURATION_THRESHOLD, SPRITE_COLOURS, CurtainSpec, classify_identity

MIN_BOX_FILL = 0.75  # sprite pixels / bounding-box area
SIZE_TOLERANCE = 0.5  # box height and width within this fraction (and at least 1 pixel) of the library size
MAX_COLOUR_DISTANCE = 48.0  # RMS distance in RGB of the sprite pixels to the palette colour read
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
    colour = np.array(list(SPRITE_COLOURS.values())[reading.colour_index], np.float64)
    rms = np.sqrt(((pixels[inside] - colour) ** 2).sum(axis=-1).mean())
    if rms > MAX_COLOUR_DISTANCE:
        return None
    return reading.identity(spec.num_shapes)
