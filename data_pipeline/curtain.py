"""The synthetic "curtain" world (docs/benchmarks.md): a memory test with exact ground truth.

One clip is a static background texture; after the first seconds a sprite (an identity: one of
8 saturated colours x up to 3 rectangle shapes of very different aspect) enters and drifts
slowly; later a curtain covers the whole frame for `gap` frames, with a thin progress bar along
its bottom showing how much of the gap has passed; then the curtain opens on the same scene (the
sprite kept drifting behind it). A frame is one latent frame of 0.25 s.

Colours are chosen so pixels identify their role: sprite colours are saturated (max - min
channel >= 200), background colours are nearly grey (<= 40), the curtain is dark grey and its
bar white. `classify_identity` reads (colour, shape) back from any frame by that rule, so the
memory experiment can score generated pixels against the library.

Splits: an (identity, background) pair belongs to the held-out split when
`(identity + background) % heldout_every == 0`, else to train, so the splits share no pair while
every identity and every background appears in both. Clip `index` of a split is drawn from
`numpy.random.default_rng([seed, split code, index])`: the same seed gives the same bytes.

Captions: by default one fixed sentence for every clip, since a caption naming the sprite would
let a model redraw it after the curtain without remembering anything; `caption_mode="descriptive"`
names colour, shape and background for experiments that want text conditioning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

LATENT_FRAME_SECONDS = 0.25
SPRITE_COLOURS = {"red": (255, 0, 0), "orange": (255, 128, 0), "yellow": (255, 255, 0), "green": (0, 200, 0),
                  "cyan": (0, 255, 255), "blue": (0, 64, 255), "magenta": (255, 0, 255), "purple": (140, 0, 255)}
# name -> (height, width) in sixteenths of the frame size: a quarter to a third of the frame.
SHAPES = {"square": (5, 5), "bar": (2, 6), "pillar": (6, 2)}
BACKGROUND_PATTERNS = ("striped", "ribbed", "checkered", "diagonal")
BACKGROUND_PALETTES = {"grey": ((90, 90, 90), (150, 150, 150)), "sand": ((150, 135, 110), (200, 190, 170))}
CURTAIN_COLOUR = (30, 30, 30)
PROGRESS_BAR_COLOUR = (255, 255, 255)
SATURATION_THRESHOLD = 100  # sprite pixels are above it, everything else far below
FIXED_CAPTION = "a shape drifts over a patterned wall and a curtain hides it for a while"
SPLITS = {"train": 0, "heldout": 1}


@dataclass(frozen=True)
class CurtainSpec:
    """World settings; ranges are inclusive, in latent frames (0.25 s each)."""

    frame_size: int = 16
    num_frames: int = 160
    num_shapes: int = 3
    entry_range: tuple[int, int] = (8, 16)
    visible_range: tuple[int, int] = (8, 16)
    gap_range: tuple[int, int] = (1, 120)
    min_after: int = 8
    drift_period: int = 4
    heldout_every: int = 4
    caption_mode: str = "fixed"

    def __post_init__(self):
        problems = []
        if self.frame_size < 8:
            problems.append(f"frame_size={self.frame_size} must be >= 8")
        if not 1 <= self.num_shapes <= len(SHAPES):
            problems.append(f"num_shapes={self.num_shapes} must be in 1..{len(SHAPES)}")
        for name in ("entry_range", "visible_range", "gap_range"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                problems.append(f"{name}={(low, high)} must satisfy 1 <= low <= high")
        if self.drift_period < 1 or self.min_after < 1 or self.heldout_every < 2:
            problems.append("drift_period and min_after must be >= 1, heldout_every >= 2")
        if self.caption_mode not in ("fixed", "descriptive"):
            problems.append(f"caption_mode={self.caption_mode!r}: choose fixed or descriptive")
        if self.num_frames < self.longest_timeline:
            problems.append(f"num_frames={self.num_frames} cannot hold the longest timeline "
                            f"({self.longest_timeline} = entry + visible + gap maxima + min_after)")
        if problems:
            raise ValueError("curtain world: " + "; ".join(problems))

    @classmethod
    def fitted(cls, **fields) -> "CurtainSpec":
        """The world of `fields` (num_frames excepted) with clips exactly as long as its longest timeline."""
        roomy = cls(**fields, num_frames=1 << 20)
        return replace(roomy, num_frames=roomy.longest_timeline)

    @property
    def longest_timeline(self) -> int:
        return self.entry_range[1] + self.visible_range[1] + self.gap_range[1] + self.min_after

    @property
    def num_identities(self) -> int:
        return len(SPRITE_COLOURS) * self.num_shapes

    @property
    def num_backgrounds(self) -> int:
        return len(BACKGROUND_PATTERNS) * len(BACKGROUND_PALETTES)

    def sprite_size(self, shape_index: int) -> tuple[int, int]:
        height, width = list(SHAPES.values())[shape_index]
        return max(1, round(self.frame_size * height / 16)), max(1, round(self.frame_size * width / 16))

    def split_of(self, identity: int, background: int) -> str:
        return "heldout" if (identity + background) % self.heldout_every == 0 else "train"

    def combinations(self, split: str) -> list[tuple[int, int]]:
        """(identity, background) pairs of a split, in a fixed order."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
        return [(i, b) for i in range(self.num_identities) for b in range(self.num_backgrounds)
                if self.split_of(i, b) == split]


@dataclass
class CurtainTruth:
    """Ground truth of one clip; frame indices are latent frames from 0."""

    split: str
    index: int
    identity: int
    colour: str
    colour_index: int
    shape: str
    shape_index: int
    background: int
    background_name: str
    entry_frame: int
    curtain_start: int
    gap: int
    num_frames: int
    sprite_size: tuple[int, int]
    # [top, left] of the sprite per frame; None before it enters. During the curtain it is where
    # the sprite is behind the curtain (it keeps drifting).
    sprite_positions: list = field(default_factory=list)
    caption: str = ""

    def covered(self, frame: int) -> bool:
        return self.curtain_start <= frame < self.curtain_start + self.gap

    def sprite_visible(self, frame: int) -> bool:
        return frame >= self.entry_frame and not self.covered(frame)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class CurtainClip:
    frames: np.ndarray  # [T, H, W, 3] uint8
    truth: CurtainTruth


@dataclass
class SpriteReading:
    """What `classify_identity` sees in a frame."""

    colour_index: int
    shape_index: int
    top: int
    left: int
    height: int
    width: int

    def identity(self, num_shapes: int) -> int:
        return identity_index(self.colour_index, self.shape_index, num_shapes)


def identity_index(colour_index: int, shape_index: int, num_shapes: int) -> int:
    return colour_index * num_shapes + shape_index


def background_name(background: int) -> str:
    pattern = BACKGROUND_PATTERNS[background % len(BACKGROUND_PATTERNS)]
    palette = list(BACKGROUND_PALETTES)[background // len(BACKGROUND_PATTERNS)]
    return f"{pattern} {palette}"


def render_background(background: int, size: int) -> np.ndarray:
    """Background texture `background` as `[size, size, 3]` uint8 (period 4 pixels)."""
    pattern = BACKGROUND_PATTERNS[background % len(BACKGROUND_PATTERNS)]
    dark, light = BACKGROUND_PALETTES[list(BACKGROUND_PALETTES)[background // len(BACKGROUND_PATTERNS)]]
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    light_mask = {"striped": rows // 2 % 2 == 0, "ribbed": cols // 2 % 2 == 0,
                  "checkered": (rows // 2 + cols // 2) % 2 == 0, "diagonal": (rows + cols) // 2 % 2 == 0}[pattern]
    return np.where(light_mask[..., None], np.array(light, np.uint8), np.array(dark, np.uint8))


def render_curtain(progress_frame: int, gap: int, size: int) -> np.ndarray:
    """The curtain at its `progress_frame`-th frame (0-based) of `gap`: the bar is full on the last."""
    frame = np.empty((size, size, 3), np.uint8)
    frame[:] = CURTAIN_COLOUR
    bar_height = max(1, size // 8)
    bar_width = math.ceil(size * (progress_frame + 1) / gap)
    frame[size - bar_height:, :bar_width] = PROGRESS_BAR_COLOUR
    return frame


def _reflect(value: int, limit: int) -> int:
    """Fold `value` into [0, limit] by bouncing off both ends."""
    if limit == 0:
        return 0
    value %= 2 * limit
    return value if value <= limit else 2 * limit - value


def _caption(spec: CurtainSpec, colour: str, shape: str, background: int) -> str:
    if spec.caption_mode == "fixed":
        return FIXED_CAPTION
    return f"a {colour} {shape} drifts over a {background_name(background)} wall"


def make_clip(spec: CurtainSpec, seed: int, split: str, index: int, *, gap: int | None = None,
              identity: int | None = None, background: int | None = None) -> CurtainClip:
    """Clip `index` of `split`. `gap`, `identity` and `background` may be forced (evaluation sweeps);
    a forced gap longer than the spec's range lengthens the clip to keep `min_after` frames after it."""
    combos = spec.combinations(split)
    if seed < 0 or index < 0:
        raise ValueError(f"seed={seed} and index={index} must be >= 0")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    drawn_identity, drawn_background = combos[int(rng.integers(len(combos)))]
    identity = drawn_identity if identity is None else identity
    background = drawn_background if background is None else background
    if not (0 <= identity < spec.num_identities and 0 <= background < spec.num_backgrounds):
        raise ValueError(f"identity {identity} / background {background} out of range "
                         f"({spec.num_identities} identities, {spec.num_backgrounds} backgrounds)")
    if spec.split_of(identity, background) != split:
        raise ValueError(f"(identity {identity}, background {background}) belongs to the "
                         f"{spec.split_of(identity, background)} split, not {split}")
    entry = int(rng.integers(spec.entry_range[0], spec.entry_range[1] + 1))
    curtain_start = entry + int(rng.integers(spec.visible_range[0], spec.visible_range[1] + 1))
    drawn_gap = int(rng.integers(spec.gap_range[0], spec.gap_range[1] + 1))
    gap = drawn_gap if gap is None else gap
    if gap < 1:
        raise ValueError(f"gap={gap} must be >= 1 frame")
    num_frames = max(spec.num_frames, curtain_start + gap + spec.min_after)
    directions = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    dy, dx = directions[int(rng.integers(len(directions)))]
    colour_index, shape_index = divmod(identity, spec.num_shapes)
    height, width = spec.sprite_size(shape_index)
    size = spec.frame_size
    top0 = int(rng.integers(0, size - height + 1))
    left0 = int(rng.integers(0, size - width + 1))

    colour = list(SPRITE_COLOURS)[colour_index]
    shape = list(SHAPES)[shape_index]
    truth = CurtainTruth(split=split, index=index, identity=identity, colour=colour, colour_index=colour_index,
                         shape=shape, shape_index=shape_index, background=background,
                         background_name=background_name(background), entry_frame=entry,
                         curtain_start=curtain_start, gap=gap, num_frames=num_frames,
                         sprite_size=(height, width), caption=_caption(spec, colour, shape, background))
    backdrop = render_background(background, size)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        position = None
        if t >= entry:
            steps = (t - entry) // spec.drift_period
            position = [_reflect(top0 + dy * steps, size - height), _reflect(left0 + dx * steps, size - width)]
        truth.sprite_positions.append(position)
        if truth.covered(t):
            frames[t] = render_curtain(t - curtain_start, gap, size)
            continue
        frames[t] = backdrop
        if position is not None:
            top, left = position
            frames[t, top:top + height, left:left + width] = SPRITE_COLOURS[colour]
    return CurtainClip(frames=frames, truth=truth)


def classify_identity(frame: np.ndarray, num_shapes: int = len(SHAPES), min_pixels: int = 2) -> SpriteReading | None:
    """Read the sprite's (colour, shape) from a `[H, W, 3]` uint8 frame; None if no sprite is seen.

    Sprite pixels are the saturated ones; the colour is the library colour most of them are
    nearest to; the shape is the library shape whose aspect ratio is nearest to the bounding box
    of those pixels. Works on generated frames as long as the sprite stays the most saturated
    thing in them.
    """
    pixels = np.asarray(frame).astype(np.int32)
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    mask = saturation >= SATURATION_THRESHOLD
    if mask.sum() < min_pixels:
        return None
    palette = np.array(list(SPRITE_COLOURS.values()), np.int32)
    distances = ((pixels[mask][:, None, :] - palette[None]) ** 2).sum(axis=-1)
    nearest = distances.argmin(axis=1)
    colour_index = int(np.bincount(nearest, minlength=len(palette)).argmax())
    rows, cols = np.nonzero(mask)
    rows, cols = rows[nearest == colour_index], cols[nearest == colour_index]
    top, left = int(rows.min()), int(cols.min())
    height, width = int(rows.max()) - top + 1, int(cols.max()) - left + 1
    aspects = [math.log(w / h) for h, w in list(SHAPES.values())[:num_shapes]]
    shape_index = int(np.argmin([abs(math.log(width / height) - a) for a in aspects]))
    return SpriteReading(colour_index=colour_index, shape_index=shape_index, top=top, left=left,
                         height=height, width=width)
