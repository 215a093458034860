"""Video files <-> uint8 frames with PyAV: decode at a target fps and size, split into clips, encode mp4.

Resampling keeps timing, not frame counts: output frame k shows the source frame on screen at
time `t0 + k / fps` (the latest source frame whose timestamp is not after it), so variable frame
rates, higher and lower source rates all come out right; frames are duplicated or dropped as
needed. Frames are scaled (area filter) to cover the target size, then centre-cropped.
"""

from __future__ import annotations

import io
from fractions import Fraction
from dataclasses import dataclass
from typing import Iterable, Iterator

import av
import numpy as np

TIME_TOLERANCE = 1e-6


@dataclass
class Clip:
    """Consecutive resampled frames of one video."""

    index: int
    start_seconds: float
    frames: np.ndarray  # [T, H, W, 3] uint8


def resample_times(timed: Iterable[tuple[float, object]], fps: float, end_time: float | None = None) -> Iterator:
    """`(time, frame)` pairs in presentation order -> frames at `fps` from the first time.

    The last source frame is held until `end_time` (exclusive); by default for one source frame
    interval (the median of the observed ones).
    """
    step = 1.0 / fps
    first_time = previous = None
    intervals: list[float] = []
    next_out = 0
    for time, frame in timed:
        if first_time is None:
            first_time = time
        else:
            intervals.append(time - previous[0])
            while first_time + next_out * step < time - TIME_TOLERANCE:
                yield previous[1]
                next_out += 1
        previous = (time, frame)
    if previous is None:
        return
    if end_time is None:
        end_time = previous[0] + (float(np.median(intervals)) if intervals else step)
    while first_time + next_out * step < end_time - TIME_TOLERANCE:
        yield previous[1]
        next_out += 1


def _cover_size(src_height: int, src_width: int, height: int, width: int) -> tuple[int, int]:
    scale = max(height / src_height, width / src_width)
    return max(height, round(src_height * scale)), max(width, round(src_width * scale))


def frame_to_rgb(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    """Scale a decoded frame to cover `height x width`, centre-crop, return `[H, W, 3]` uint8."""
    scaled_height, scaled_width = _cover_size(frame.height, frame.width, height, width)
    rgb = frame.to_ndarray(width=scaled_width, height=scaled_height, format="rgb24", interpolation="AREA")
    top, left = (scaled_height - height) // 2, (scaled_width - width) // 2
    return np.ascontiguousarray(rgb[top:top + height, left:left + width])


class VideoFrames:
    """Frames of a video's first video stream at `fps`, `[height, width, 3]` uint8 each, when iterated.

    After iterating, `decoded_seconds` is how much video was decoded and `declared_seconds` what
    the container promised (None when it does not say); `cut_short` compares the two, so a file
    truncated after its header, which still opens and decodes, is not mistaken for a short video.
    """

    def __init__(self, path: str, fps: float, height: int, width: int):
        self.path, self.fps, self.height, self.width = str(path), fps, height, width
        self.declared_seconds: float | None = None
        self.decoded_seconds = 0.0

    @property
    def cut_short(self) -> bool:
        """Less than the declared duration was decoded (by more than a frame at `fps` and 5 %)."""
        if self.declared_seconds is None:
            return False
        return self.declared_seconds - self.decoded_seconds > max(1.0 / self.fps, 0.05 * self.declared_seconds)

    def __iter__(self) -> Iterator[np.ndarray]:
        with av.open(self.path) as container:
            if not container.streams.video:
                raise ValueError(f"{self.path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            self.declared_seconds = _declared_seconds(container, stream)
            rate = float(stream.average_rate) if stream.average_rate else self.fps
            first_time = None

            def timed() -> Iterator[tuple[float, tuple[int, av.VideoFrame]]]:
                nonlocal first_time
                for number, frame in enumerate(container.decode(stream)):
                    time = frame.time if frame.time is not None else number / rate
                    first_time = time if first_time is None else first_time
                    self.decoded_seconds = time - first_time + 1.0 / rate
                    yield time, (number, frame)

            last_number, last_rgb = -1, None
            for number, frame in resample_times(timed(), self.fps):
                if number != last_number:  # a source frame shown several times is converted once
                    last_number, last_rgb = number, frame_to_rgb(frame, self.height, self.width)
                yield last_rgb


def _declared_seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def split_clips(frames: Iterable[np.ndarray], fps: float, clip_frames: int, min_frames: int,
                frame_multiple: tuple[int, int] = (1, 0)) -> Iterator[Clip]:
    """Consecutive clips of `clip_frames` frames; a shorter last clip is kept if it has `min_frames`.

    `frame_multiple=(m, r)` trims every clip to a length `n` with `n % m == r` (Wan's VAE takes
    `4k + 1` frames).
    """
    multiple, remainder = frame_multiple

    def trimmed(count: int) -> int:
        return count - ((count - remainder) % multiple)

    buffer: list[np.ndarray] = []
    index = start = 0
    for frame in frames:
        buffer.append(frame)
        if len(buffer) == clip_frames:
            keep = trimmed(clip_frames)
            yield Clip(index=index, start_seconds=start / fps, frames=np.stack(buffer[:keep]))
            index, start, buffer = index + 1, start + clip_frames, []
    keep = trimmed(len(buffer)) if buffer else 0
    if keep >= min_frames and keep > 0:
        yield Clip(index=index, start_seconds=start / fps, frames=np.stack(buffer[:keep]))


def encode_mp4(frames: np.ndarray, fps: float, scale: int = 1) -> bytes:
    """`[T, H, W, 3]` uint8 -> H.264 mp4 bytes (lossy; previews only). `scale` enlarges by pixel repeat."""
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    height, width = frames.shape[1] + frames.shape[1] % 2, frames.shape[2] + frames.shape[2] % 2
    frames = np.pad(frames, ((0, 0), (0, height - frames.shape[1]), (0, width - frames.shape[2]), (0, 0)), mode="edge")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
