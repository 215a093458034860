"""Frames and captions -> what a shard stores: latents from the config's codec, caption embeddings.

Training then never runs the VAE or the text encoder. The codec and text encoder come from a
`ctxf` config (`codec` and `text` sections), so shards match the model that will train on them.
"""

from __future__ import annotations

import numpy as np
import torch

from ctxf.config import Config
from ctxf.models.codec import PixelCodec, WanVAECodec, build_codec, uint8_to_video
from ctxf.models.text_encoder import build_text_encoder


class ClipEncoder:
    def __init__(self, cfg: Config, device: str = "cpu"):
        self.cfg = cfg
        self.codec = build_codec(cfg.codec, device=device)
        self.text_encoder = build_text_encoder(cfg.text, cfg.model.text_dim, device=device)
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def spatial_stride(self) -> int:
        return self.codec.spatial_stride

    @property
    def frame_multiple(self) -> tuple[int, int]:
        """(m, r): clip lengths `n` the codec accepts satisfy `n % m == r`."""
        if isinstance(self.codec, WanVAECodec):
            return self.codec.temporal_stride, 1 % self.codec.temporal_stride
        return 1, 0

    def codec_metadata(self) -> dict:
        if isinstance(self.codec, PixelCodec):
            return {"codec": "pixel", "pixel_patch": self.codec.patch}
        return {"codec": "wan_vae"}

    @torch.no_grad()
    def latents(self, frames: np.ndarray) -> torch.Tensor:
        """`[T, H, W, 3]` uint8 -> `[C, F, h, w]` float32."""
        video = uint8_to_video(torch.from_numpy(np.ascontiguousarray(frames))[None])
        return self.codec.encode(video)[0].float().cpu()

    def text(self, caption: str) -> torch.Tensor:
        """Valid-token embedding `[L, D]` of a caption (cached: clips often share captions)."""
        if caption not in self._text_cache:
            if len(self._text_cache) > 1024:
                self._text_cache.clear()
            self._text_cache[caption] = self.text_encoder.encode_valid([caption])[0].float().cpu()
        return self._text_cache[caption]
