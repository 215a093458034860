"""What a run reports: TensorBoard scalars and sample images, a JSONL copy of the scalars, and a
console line with a progress bar. Only rank 0 writes; other ranks get a logger that does nothing.

    <output_dir>/tensorboard/    events (TensorBoard's own reader reads them back)
    <output_dir>/metrics.jsonl   {"step": N, "time": unix seconds, "<name>": value, ...} per logged step
    <output_dir>/samples/        step_XXXXXXXX.png: the sample clip's frames side by side
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


class RunLog:
    def __init__(self, output_dir: Path, total_steps: int, first_step: int, enabled: bool):
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self._writer = self._jsonl = self._bar = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=first_step + 1)
        self._jsonl = open(self.output_dir / "metrics.jsonl", "a")
        self._bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True, desc="train")

    def info(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def advance(self, step: int) -> None:
        if self.enabled:
            self._bar.n = step
            self._bar.refresh()

    def scalars(self, step: int, values: dict[str, float], total_steps: int) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self._jsonl.flush()
        shown = {k: v for k, v in values.items() if k.startswith("loss/") or k in ("grad_norm", "samples_per_s")}
        self.info(f"step {step}/{total_steps} " + " ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())))

    def sample(self, step: int, frames: torch.Tensor) -> Path | None:
        """`frames [T, H, W, 3]` uint8 as one image row (TensorBoard image and a PNG)."""
        if not self.enabled:
            return None
        row = frames.permute(1, 0, 2, 3).reshape(frames.shape[1], -1, 3)  # [T, H, W, 3] -> [H, T*W, 3]
        self._writer.add_image("sample/frames", row, step, dataformats="HWC")
        self._writer.flush()
        path = self.output_dir / "samples" / f"step_{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_png(path, row.numpy())
        return path

    def close(self) -> None:
        if self.enabled:
            self._bar.close()
            self._writer.close()
            self._jsonl.close()


def _write_png(path: Path, image: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, image)
