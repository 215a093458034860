"""Read one tensor from a `.npy` or `.safetensors` file (latent clips, text embeddings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def load_tensor(path: str | Path, name: str, what: str) -> torch.Tensor:
    """The tensor called `name` (or the file's only tensor); `what` names the file in errors."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if file.suffix == ".npy":
        return torch.from_numpy(np.load(file))
    if file.suffix == ".safetensors":
        tensors = load_file(str(file))
        if name in tensors:
            return tensors[name]
        if len(tensors) != 1:
            raise ValueError(f"{what} {path} holds {sorted(tensors)}; name the tensor {name!r} or store only one")
        return next(iter(tensors.values()))
    raise ValueError(f"{what} {path}: use a .npy or .safetensors file")
