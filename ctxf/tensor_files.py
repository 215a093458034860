"""Read one tensor from a `.npy` or `.safetensors` file (latent clips, text embeddings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


def load_tensor(path: str | Path, name: str, what: str) -> torch.Tensor:
    """The tensor called `name` (or the file's only tensor); `what` names the file in errors."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if file.suffix == ".npy":
        try:
            return torch.from_numpy(np.load(file, allow_pickle=False))
        except (ValueError, OSError, EOFError) as err:  # numpy's reader on an empty, cut or pickled file
            raise ValueError(_unreadable(what, file, err)) from err
    if file.suffix == ".safetensors":
        try:
            tensors = load_file(str(file))
        except SafetensorError as err:
            raise ValueError(_unreadable(what, file, err)) from err
        if name in tensors:
            return tensors[name]
        if len(tensors) != 1:
            raise ValueError(f"{what} {path} holds {sorted(tensors)}; name the tensor {name!r} or store only one")
        return next(iter(tensors.values()))
    raise ValueError(f"{what} {path}: use a .npy or .safetensors file")


def _unreadable(what: str, file: Path, err: Exception) -> str:
    return (f"{what} {file} cannot be read ({err}; {file.stat().st_size} bytes): it is empty, cut short or not "
            f"a plain tensor file; write it again (numpy.save or safetensors.torch.save_file)")
