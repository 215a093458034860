"""The one description of a training sample in a tar shard, with its encoder and decoder.

Shards are plain POSIX tar files in webdataset's convention: the members of one sample share a
key and differ by extension, `<key>.<ext>`, and a sample's members sit next to each other. A key
holds no dot (webdataset splits the name at the first dot of its last path component). Members:

    <key>.latents.safetensors   latents `[C, F, h, w]` (channels, latent frames, height, width),
                                one tensor named "latents", float32 by default (bfloat16 or
                                float16 if the writer asked), exact bytes.
    <key>.text.safetensors      text embedding of the caption, valid tokens only: `[L, D]`, one
                                tensor named "text", bfloat16 by default. The loader pads it
                                back to `text.max_length` rows with zeros (Wan's convention).
    <key>.json                  metadata, UTF-8 JSON object (see below).
    <key>.txt                   optional: the caption, for people and grep.
    <key>.mp4                   optional: a lossy preview for people; training never reads it.

`.latents.npy` and `.text.npy` (numpy's format) are read as well, so shards made by other tools
or by hand with `tar` work; numpy has no bfloat16, so the writer here uses safetensors.

Metadata keys written by `data_pipeline` (readers must tolerate extra keys):
    format            "ctxf-sample/1"
    key               the sample key
    caption           the caption the text embedding was computed from
    source            where the clip came from: a video path, or "curtain"
    fps               video frames per second the clip was resampled to
    num_frames        latent frames F (equals latents.shape[1])
    num_video_frames  decoded video frames the latents encode
    height, width     video frame size in pixels
    codec             "pixel" or "wan_vae" (and `pixel_patch` for the pixel codec)
    real videos:      clip_index, start_seconds
    curtain clips:    `curtain`: the ground truth, see `data_pipeline.curtain.CurtainTruth`
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

FORMAT_VERSION = "ctxf-sample/1"
LATENTS_EXT = "latents.safetensors"
TEXT_EXT = "text.safetensors"
LATENTS_NPY_EXT = "latents.npy"
TEXT_NPY_EXT = "text.npy"
META_EXT = "json"
CAPTION_EXT = "txt"
PREVIEW_EXT = "mp4"
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SampleFormatError(ValueError):
    """A sample's members are missing or do not hold what the format promises."""


@dataclass
class Sample:
    """One decoded sample, tensors in their stored dtype (the collator converts to float32)."""

    key: str
    latents: torch.Tensor | None  # [C, F, h, w]; None when the loader skips latents
    text: torch.Tensor  # [L, D], valid tokens only
    meta: dict


def storage_dtype(name: str) -> torch.dtype:
    if name not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {name!r}: choose one of {', '.join(STORAGE_DTYPES)}")
    return STORAGE_DTYPES[name]


def check_key(key: str) -> str:
    if not key or "." in key.rsplit("/", 1)[-1] or key.startswith("_"):
        raise ValueError(f"sample key {key!r} must be non-empty, hold no dot in its last path component and "
                         f"not start with '_' (webdataset reads the name up to the first dot as the key)")
    return key


def _stored(tensor: torch.Tensor, dtype_name: str) -> torch.Tensor:
    return tensor.detach().cpu().to(storage_dtype(dtype_name)).contiguous()


def encode_sample(key: str, latents: torch.Tensor, text: torch.Tensor, meta: dict, *,
                  latent_dtype: str = "float32", text_dtype: str = "bfloat16",
                  caption: str | None = None, preview_mp4: bytes | None = None) -> dict:
    """A `{"__key__": key, ext: bytes}` dict ready for `webdataset.ShardWriter.write`."""
    check_key(key)
    if latents.ndim != 4:
        raise ValueError(f"latents must be [C, F, h, w], got shape {tuple(latents.shape)}")
    if text.ndim != 2:
        raise ValueError(f"text embedding must be [num_valid_tokens, D], got shape {tuple(text.shape)}")
    meta = {"format": FORMAT_VERSION, "key": key, **meta, "num_frames": int(latents.shape[1])}
    sample = {
        "__key__": key,
        LATENTS_EXT: save_safetensors({"latents": _stored(latents, latent_dtype)}),
        TEXT_EXT: save_safetensors({"text": _stored(text, text_dtype)}),
        META_EXT: json.dumps(meta, sort_keys=True).encode("utf-8"),
    }
    if caption is not None:
        sample[CAPTION_EXT] = caption.encode("utf-8")
    if preview_mp4 is not None:
        sample[PREVIEW_EXT] = preview_mp4
    return sample


def _tensor_member(raw: dict, safetensors_ext: str, npy_ext: str, name: str) -> torch.Tensor | None:
    if safetensors_ext in raw:
        tensors = load_safetensors(bytes(raw[safetensors_ext]))
        if set(tensors) != {name}:
            raise SampleFormatError(f".{safetensors_ext} must hold one tensor named {name!r}, holds {sorted(tensors)}")
        return tensors[name]
    if npy_ext in raw:
        return torch.from_numpy(np.load(io.BytesIO(raw[npy_ext]), allow_pickle=False).copy())
    return None


def decode_sample(raw: dict, load_latents: bool = True) -> Sample:
    """Raw tar members of one sample -> `Sample`. Raises on anything malformed, naming the problem."""
    key = raw.get("__key__", "?")
    try:
        meta = json.loads(raw[META_EXT]) if META_EXT in raw else {}
        text = _tensor_member(raw, TEXT_EXT, TEXT_NPY_EXT, "text")
        latents = _tensor_member(raw, LATENTS_EXT, LATENTS_NPY_EXT, "latents") if load_latents else None
    except SampleFormatError:
        raise
    except Exception as err:  # safetensors, numpy and json each raise their own types on bad bytes
        raise SampleFormatError(f"sample {key}: unreadable member ({type(err).__name__}: {err})") from err
    if not isinstance(meta, dict):
        raise SampleFormatError(f"sample {key}: .json must hold an object, got {type(meta).__name__}")
    if text is None:
        raise SampleFormatError(f"sample {key}: no .{TEXT_EXT} or .{TEXT_NPY_EXT} member")
    if text.ndim != 2:
        raise SampleFormatError(f"sample {key}: text embedding has shape {tuple(text.shape)}, expected [L, D]")
    if load_latents:
        if latents is None:
            raise SampleFormatError(f"sample {key}: no .{LATENTS_EXT} or .{LATENTS_NPY_EXT} member")
        if latents.ndim != 4:
            raise SampleFormatError(f"sample {key}: latents have shape {tuple(latents.shape)}, expected [C, F, h, w]")
        if "num_frames" in meta and meta["num_frames"] != latents.shape[1]:
            raise SampleFormatError(f"sample {key}: metadata says {meta['num_frames']} frames, latents hold "
                                    f"{latents.shape[1]}")
    return Sample(key=key, latents=latents, text=text, meta=meta)
