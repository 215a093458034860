"""Write frames to a viewable mp4 with PyAV (H.264, yuv420p): at once, as they arrive, or side by side."""

from __future__ import annotations

from pathlib import Path

import torch


def display_scale(height: int, width: int, min_side: int = 256) -> int:
    """Integer nearest-neighbour upscale so tiny synthetic frames are big enough to look at."""
    return max(1, -(-min_side // min(height, width)))


def write_mp4(frames: torch.Tensor, path: str | Path, fps: float, scale: int = 1) -> Path:
    """`frames [T, H, W, 3]` uint8 -> mp4 at `fps`, each pixel repeated `scale` times."""
    frames = _even_sides(frames, scale)  # checked before the file is created
    with Mp4Writer(path, fps) as writer:
        writer.write(frames)
    return Path(path)


class Mp4Writer:
    """An mp4 written as frames arrive. `growing=True` makes it a fragmented mp4 (a fragment per
    frame, flushed at once, no encoder look-ahead), so players can open it while it grows and
    everything before the last frame survives even if the process dies before `close()`."""

    def __init__(self, path: str | Path, fps: float, scale: int = 1, growing: bool = False):
        import av

        self.path, self.scale = Path(path), scale
        self.path.parent.mkdir(parents=True, exist_ok=True)
        options = {"movflags": "frag_keyframe+empty_moov+default_base_moof+frag_every_frame",
                   "flush_packets": "1"} if growing else {}
        self.container = av.open(str(self.path), mode="w", format="mp4", options=options)
        self.stream = self.container.add_stream("libx264", rate=round(fps),
                                                options={"tune": "zerolatency"} if growing else {})
        self.stream.pix_fmt = "yuv420p"
        self.num_frames = 0

    def write(self, frames: torch.Tensor) -> None:
        """Append `frames [T, H, W, 3]` uint8 (every call the same size)."""
        import av

        frames = _even_sides(frames, self.scale)
        if self.num_frames == 0:
            self.stream.width, self.stream.height = frames.shape[2], frames.shape[1]
        for frame in frames.numpy():
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                self.container.mux(packet)
        self.num_frames += len(frames)

    def close(self) -> None:
        if self.num_frames:  # an encoder never given a frame has nothing to flush (nor a size to open with)
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _even_sides(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """Upscaled by `scale`, last row / column repeated to even sides (yuv420p needs them)."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if scale > 1:
        frames = frames.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        # [T, H, W, 3] -> [T, 3, H, W] to pad, and back
        padded = torch.nn.functional.pad(frames.permute(0, 3, 1, 2).float(), (0, width % 2, 0, height % 2),
                                         mode="replicate")
        frames = padded.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return frames


def side_by_side(videos: list[torch.Tensor], gap: int = 2) -> torch.Tensor:
    """Frames `[T, H, W, 3]` of several videos placed left to right, `gap` black columns apart; the
    shorter ones hold their last frame."""
    length = max(len(v) for v in videos)
    height = max(v.shape[1] for v in videos)
    columns = []
    for n, video in enumerate(videos):
        if len(video) < length:
            video = torch.cat([video, video[-1:].expand(length - len(video), -1, -1, -1)])
        # [T, h, W, 3] -> [T, H, W, 3]: black rows below a shorter video
        video = torch.nn.functional.pad(video, (0, 0, 0, 0, 0, height - video.shape[1]))
        columns.append(video)
        if n + 1 < len(videos):
            columns.append(video.new_zeros(length, height, gap, 3))
    return torch.cat(columns, dim=2)
