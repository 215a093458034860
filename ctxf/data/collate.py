"""Decoded samples -> one training batch (float32 tensors, text padded to a fixed length)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ctxf.data.format import Sample
from ctxf.models.text_encoder import pad_text_embeddings


@dataclass
class Batch:
    """What the trainer receives.

    latents       `[B, C, F, h, w]` float32, or None when the loader was told not to read latents
    text          `[B, max_length, D]` float32, zero past each sample's valid tokens
    text_lengths  `[B]` int64, valid tokens per sample
    keys          sample keys, in batch order
    meta          each sample's metadata, plus `window_start`: the first latent frame kept
    """

    latents: torch.Tensor | None
    text: torch.Tensor
    text_lengths: torch.Tensor
    keys: list[str]
    meta: list[dict]

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        latents = None if self.latents is None else self.latents.to(device, non_blocking=non_blocking)
        return replace(self, latents=latents, text=self.text.to(device, non_blocking=non_blocking),
                       text_lengths=self.text_lengths.to(device, non_blocking=non_blocking))


def collate(samples: list[Sample], max_length: int) -> Batch:
    """Stack samples; latents of different shapes in one batch are a configuration error."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    latents = None
    if samples[0].latents is not None:
        shapes = {tuple(s.latents.shape) for s in samples}
        if len(shapes) > 1:
            described = ", ".join(f"{s.key}: {tuple(s.latents.shape)}" for s in samples)
            raise ValueError(f"latents of different shapes in one batch ({described}); set data.num_frames to crop "
                             f"windows of one length, or write clips of one length and resolution")
        latents = torch.stack([s.latents.float() for s in samples])
    texts = [s.text for s in samples]
    dims = {t.shape[-1] for t in texts}
    if len(dims) > 1:
        raise ValueError(f"text embeddings of different widths {sorted(dims)} in one batch; the shards were "
                         f"written with different text encoders")
    lengths = torch.tensor([min(t.shape[0], max_length) for t in texts], dtype=torch.int64)
    return Batch(latents=latents, text=pad_text_embeddings(texts, max_length), text_lengths=lengths,
                 keys=[s.key for s in samples], meta=[s.meta for s in samples])
