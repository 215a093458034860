"""Build a role's model from the config: random init (seeded) or weights from disk."""

from __future__ import annotations

import torch

from ctxf.config import ModelConfig


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"inference.device={name} requested but CUDA is not available; use cpu or auto")
    return device


def model_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """bfloat16 only where it is fast (CUDA); CPU runs stay in float32."""
    return torch.bfloat16 if cfg.dtype == "bfloat16" and device.type == "cuda" else torch.float32


def build_model(cfg: ModelConfig, device: torch.device, checkpoint: str = "", seed: int = 0,
                checkpoint_key: str | None = None):
    from ctxf.models.wan import WanDiT

    torch.manual_seed(seed)
    model = WanDiT(cfg)
    if checkpoint:
        from ctxf.models.weights import load_model_weights

        load_model_weights(model, checkpoint, checkpoint_key)
    return model.to(device=device, dtype=model_dtype(cfg, device)).eval()
