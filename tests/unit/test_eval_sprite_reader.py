"""The strict sprite reader: credits one clean sprite through generator-like damage (noise, blur,
shifts, colour casts) and abstains on what is not one clean sprite of one palette identity (a ghost,
two sprites, a blob of the wrong size, a colour halfway between two palette colours, a curtain or
a noisy background). Frames are drawn here by hand, not by the world's renderer."""

import numpy as np
import pytest

from ctxf.eval.sprite_reader import read_sprite
from data_pipeline.curtain import CurtainSpec

SPEC = CurtainSpec()
GREY = (120, 120, 120)
RED, ORANGE, MAGENTA, BLUE = (255, 0, 0), (255, 128, 0), (255, 0, 255), (0, 64, 255)
# identity = colour index * 3 + shape index; shapes: square 5x5, bar 2x6, pillar 6x2 on 16 px frames
RED_SQUARE, BLUE_BAR = 0, 5 * 3 + 1


def frame(*sprites, background=GREY):
    out = np.empty((16, 16, 3), np.float64)
    out[:] = background
    for colour, top, left, height, width in sprites:
        out[top:top + height, left:left + width] = colour
    return out


def as_uint8(pixels):
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def box_blur(pixels):
    """3-tap blur along rows and columns, edges repeated."""
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = (padded[:-2] + padded[1:-1] + padded[2:]) / 3
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:])[:, :, :] / 3


@pytest.mark.parametrize("top, left", [(0, 0), (3, 7), (11, 11)])
def test_clean_sprites_are_read_wherever_they_are(top, left):
    assert read_sprite(as_uint8(frame((RED, top, left, 5, 5))), SPEC) == RED_SQUARE
    assert read_sprite(as_uint8(frame((BLUE, min(top, 14), min(left, 10), 2, 6))), SPEC) == BLUE_BAR


def test_noise_blur_and_colour_cast_are_still_read():
    rng = np.random.default_rng(0)
    clean = frame((RED, 4, 6, 5, 5))
    assert read_sprite(as_uint8(clean + rng.normal(0, 8, clean.shape)), SPEC) == RED_SQUARE
    assert read_sprite(as_uint8(box_blur(clean)), SPEC) == RED_SQUARE
    assert read_sprite(as_uint8(box_blur(frame((BLUE, 7, 3, 2, 6)))), SPEC) == BLUE_BAR, "a thin bar, blurred"
    assert read_sprite(as_uint8(clean + np.array([-20, 20, 15])), SPEC) == RED_SQUARE


@pytest.mark.parametrize("name, pixels", [
    ("ghost", 0.45 * frame((RED, 4, 6, 5, 5)) + 0.55 * frame()),
    ("two sprites", frame((RED, 0, 0, 5, 5), (RED, 10, 10, 5, 5))),
    ("two colours", frame((RED, 0, 0, 5, 5), (BLUE, 10, 4, 2, 6))),
    ("blob too large", frame((RED, 1, 1, 11, 11))),
    ("blob too small", frame((RED, 4, 4, 2, 2))),
    ("halfway red-magenta", frame(((255, 0, 128), 4, 6, 5, 5))),
    ("halfway red-orange", frame(((255, 64, 0), 4, 6, 5, 5))),
    ("curtain", frame(background=(30, 30, 30))),
    ("saturated noise", np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.float64)),
])
def test_what_is_not_one_clean_sprite_is_an_abstention(name, pixels):
    assert read_sprite(as_uint8(pixels), SPEC) is None, name
