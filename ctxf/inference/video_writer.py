"""Write frames to a viewable mp4 with PyAV (H.264, yuv420p)."""

from __future__ import annotations

from pathlib import Path

import torch


def display_scale(height: int, width: int, min_side: int = 256) -> int:
    """Integer nearest-neighbour upscale so tiny synthetic frames are big enough to look at."""
    return max(1, -(-min_side // min(height, width)))


def write_mp4(frames: torch.Tensor, path: str | Path, fps: float, scale: int = 1) -> Path:
    """`frames [T, H, W, 3]` uint8 -> mp4 at `fps`, each pixel repeated `scale` times."""
    import av

    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if scale > 1:
        frames = frames.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        # yuv420p needs even sides: repeat the last row / column; [T, H, W, 3] -> [T, 3, H, W] and back
        padded = torch.nn.functional.pad(frames.permute(0, 3, 1, 2).float(), (0, width % 2, 0, height % 2),
                                         mode="replicate")
        frames = padded.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames.numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
