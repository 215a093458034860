"""Consistency of a generated video, with or without a feature network.

    python -m ctxf.eval.consistency outputs/generate/video.mp4
    python -m ctxf.eval.consistency video.mp4 --weights /models/dinov2-small --weights /models/clip-vit-b32

Weight-free (always):
- flicker: mean absolute change between consecutive frames, as a fraction of the 0-255 range;
- drift: how far the video wanders, comparing the mean frame of its first 15% with that of its
  last 15% (mean absolute difference of pixels, and distance of their mean colours).

With `--weights DIR` (a local transformers directory of a DINOv2 or CLIP vision model and its image
processor; nothing is downloaded): the subject / background consistency of VBench-style
evaluation, from per-frame features (DINOv2: the CLS token; CLIP: the projected image embedding):
`to_first` = mean cosine of every frame to the first, `to_previous` = mean cosine of every frame
to the one before, and `score` = their mean. DINOv2 features track the subject, CLIP's the scene.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

DRIFT_FRACTION = 0.15


def flicker(frames: np.ndarray) -> float:
    """Mean |frame t - frame t-1| over pixels and time, in [0, 1]; 0 for fewer than two frames."""
    if frames.shape[0] < 2:
        return 0.0
    pixels = frames.astype(np.float64) / 255.0
    return float(np.abs(np.diff(pixels, axis=0)).mean())


def drift(frames: np.ndarray, fraction: float = DRIFT_FRACTION) -> dict:
    """The first `fraction` of the frames against the last: distance of their mean frames (pixels) and of
    their mean colours, both in [0, 1]."""
    count = max(1, round(frames.shape[0] * fraction))
    pixels = frames.astype(np.float64) / 255.0
    first, last = pixels[:count].mean(axis=0), pixels[-count:].mean(axis=0)
    colour_shift = first.reshape(-1, 3).mean(axis=0) - last.reshape(-1, 3).mean(axis=0)
    return {"pixels": float(np.abs(first - last).mean()), "colour": float(np.linalg.norm(colour_shift) / np.sqrt(3)),
            "frames_compared": count}


def weight_free_metrics(frames: np.ndarray) -> dict:
    check_frames(frames)
    return {"num_frames": int(frames.shape[0]), "flicker": flicker(frames), "drift": drift(frames)}


def check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(f"expected [T, H, W, 3] uint8 frames with T >= 1, got {frames.dtype} {frames.shape}")


class FeatureConsistency:
    """Cosine consistency of per-frame features from a local DINOv2 or CLIP vision model."""

    def __init__(self, weights_dir: str, device: str = "cpu"):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

        if not Path(weights_dir).is_dir():
            raise FileNotFoundError(f"--weights {weights_dir}: no such directory; give a local transformers "
                                    f"directory (config.json, weights, preprocessor_config.json)")
        config = AutoConfig.from_pretrained(weights_dir, local_files_only=True)
        self.kind = config.model_type
        if self.kind not in ("dinov2", "clip", "clip_vision_model"):
            raise ValueError(f"--weights {weights_dir} holds a {self.kind!r} model; give a DINOv2 or CLIP one")
        self.processor = AutoImageProcessor.from_pretrained(weights_dir, local_files_only=True)
        model_class = AutoModel if self.kind == "dinov2" else CLIPVisionModelWithProjection
        self.model = model_class.from_pretrained(weights_dir, local_files_only=True).to(device).eval()
        self.device = device

    @torch.no_grad()
    def features(self, frames: np.ndarray) -> torch.Tensor:
        """`[T, H, W, 3]` uint8 -> unit feature vectors `[T, D]`."""
        inputs = self.processor(images=list(frames), return_tensors="pt").to(self.device)
        output = self.model(**inputs)
        features = output.last_hidden_state[:, 0] if self.kind == "dinov2" else output.image_embeds
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def __call__(self, frames: np.ndarray) -> dict:
        check_frames(frames)
        features = self.features(frames)
        if features.shape[0] < 2:
            return {"model": self.kind, "to_first": 1.0, "to_previous": 1.0, "score": 1.0}
        to_first = (features[1:] @ features[0]).mean().item()
        to_previous = (features[1:] * features[:-1]).sum(dim=-1).mean().item()
        return {"model": self.kind, "to_first": to_first, "to_previous": to_previous,
                "score": (to_first + to_previous) / 2}


def read_video(path: str) -> np.ndarray:
    """Every frame of a video file as `[T, H, W, 3]` uint8 (PyAV)."""
    import av

    if not Path(path).is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        with av.open(path) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.FFmpegError, UnicodeDecodeError) as err:
        raise ValueError(f"video {path}: PyAV cannot decode it ({err})") from None
    if not frames:
        raise ValueError(f"video {path} holds no frames")
    return np.stack(frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxf.eval.consistency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", help="video files to measure")
    parser.add_argument("--weights", action="append", default=[], metavar="DIR",
                        help="local transformers DINOv2 or CLIP directory (repeatable; nothing is downloaded)")
    parser.add_argument("--out", help="write the metrics to this JSON file too")
    args = parser.parse_args(argv)
    try:
        networks = [FeatureConsistency(path) for path in args.weights]
        report = {}
        for video in args.videos:
            frames = read_video(video)
            report[video] = {**weight_free_metrics(frames), "features": {net.kind: net(frames) for net in networks}}
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"consistency: error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
