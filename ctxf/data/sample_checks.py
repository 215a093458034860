"""Does a decoded sample fit the model being trained? Shapes from the config, dtypes that convert exactly.

    shape = SampleShape.from_config(cfg)
    problem = shape.mismatch(sample)         # None, or what differs, e.g. "latents [16, 9, 8, 8] ..."
    sample = exact_dtypes(sample)            # float64 / integer tensors -> float32 when no value changes

A sample that fails either check is bad input, like a damaged one: the reader skips and counts it
(`stream.py`), instead of letting collate fail inside a worker on every epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from ctxf.data.format import STORAGE_DTYPES, Sample, SampleFormatError

logger = logging.getLogger("ctxf.data")

_converted_dtypes: set[torch.dtype] = set()  # dtypes already reported as converted in this process


class SampleMismatchError(SampleFormatError):
    """A readable sample that the configured model cannot train on (shape or dtype)."""


@dataclass(frozen=True)
class SampleShape:
    """Latents `[latent_channels, F, latent_height, latent_width]` and text `[L, text_dim]`; None: any."""

    latent_channels: int | None = None
    latent_height: int | None = None
    latent_width: int | None = None
    text_dim: int | None = None

    @classmethod
    def from_config(cls, cfg) -> "SampleShape":
        return cls(latent_channels=cfg.model.in_channels, latent_height=cfg.video.latent_height,
                   latent_width=cfg.video.latent_width, text_dim=cfg.model.text_dim)

    def mismatch(self, sample: Sample) -> str | None:
        """What about `sample` differs from this shape, naming the config keys; None when it fits."""
        problems = []
        if sample.latents is not None:
            channels, _, height, width = sample.latents.shape
            expected = (self.latent_channels, self.latent_height, self.latent_width)
            if any(want is not None and want != got for want, got in zip(expected, (channels, height, width))):
                problems.append(f"latents [C, F, h, w] = {list(sample.latents.shape)}, the config expects "
                                f"[{_any(self.latent_channels)}, F, {_any(self.latent_height)}, "
                                f"{_any(self.latent_width)}] (model.in_channels, video.latent_height, "
                                f"video.latent_width)")
        if self.text_dim is not None and sample.text.shape[-1] != self.text_dim:
            problems.append(f"text embedding width {sample.text.shape[-1]}, the config expects model.text_dim="
                            f"{self.text_dim}")
        return "; ".join(problems) or None


def _any(value: int | None) -> str:
    return "*" if value is None else str(value)


def exact_dtypes(sample: Sample) -> Sample:
    """The sample with tensors of other dtypes than the storage ones converted to float32, when every
    value survives the conversion exactly (reported once per dtype and process); otherwise raises
    `SampleMismatchError` naming the sample."""
    latents = None if sample.latents is None else _exact_float32(sample.latents, sample.key, "latents")
    return replace(sample, latents=latents, text=_exact_float32(sample.text, sample.key, "text embedding"))


def _exact_float32(tensor: torch.Tensor, key: str, what: str) -> torch.Tensor:
    if tensor.dtype in STORAGE_DTYPES.values():
        return tensor
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise SampleMismatchError(f"sample {key}: {what} stored as {tensor.dtype}, which is not a real number "
                                  f"type; write {', '.join(STORAGE_DTYPES)}")
    converted = tensor.to(torch.float32)
    if not torch.equal(converted.to(tensor.dtype), tensor):
        raise SampleMismatchError(f"sample {key}: {what} stored as {tensor.dtype} hold values float32 cannot "
                                  f"represent exactly; write the shards with float32 ({', '.join(STORAGE_DTYPES)} "
                                  f"are read as stored)")
    if tensor.dtype not in _converted_dtypes:
        _converted_dtypes.add(tensor.dtype)
        logger.warning("sample %s: %s stored as %s, converted to float32 exactly (reported once per dtype; "
                       "store float32 to skip the check)", key, what, tensor.dtype)
    return converted
