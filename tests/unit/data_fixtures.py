"""Small shards for the data tests: samples whose tensors encode their own identity.

Sample `i` has latents filled with `i + frame / 100` and a text embedding filled with `i`, so a
sample that reaches the wrong place, or frames cropped from the wrong offset, show in the values.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctxf.data.format import encode_sample
from data_pipeline.shards import AtomicShardWriter, write_manifest

CHANNELS, HEIGHT, WIDTH, TEXT_DIM = 2, 2, 2, 4


def sample_tensors(index: int, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.arange(num_frames, dtype=torch.float32) / 100
    latents = (index + frames).view(1, num_frames, 1, 1).expand(CHANNELS, num_frames, HEIGHT, WIDTH).contiguous()
    text = torch.full((1 + index % 5, TEXT_DIM), float(index))
    return latents, text


def write_tiny_shards(out_dir: Path, counts: list[int], num_frames: int = 6,
                      first_index: int = 0) -> tuple[list[str], dict]:
    """One shard per non-zero entry of `counts`, holding that many samples, and a manifest.json.

    Returns (shard paths, key -> {"latents", "text", "meta", "index"}).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    samples, entries, index = {}, [], first_index
    for shard_number, count in enumerate(counts):
        with AtomicShardWriter(out_dir, max_bytes=1e12, max_samples=10**9, start_shard=shard_number) as writer:
            for _ in range(count):
                key = f"sample-{index:05d}"
                latents, text = sample_tensors(index, num_frames)
                meta = {"caption": f"caption {index}", "index": index}
                writer.write(encode_sample(key, latents, text, meta, text_dtype="float32"))
                samples[key] = {"latents": latents, "text": text, "meta": meta, "index": index}
                index += 1
        entries += writer.shards
    write_manifest(out_dir, entries, created_by="tests", settings={"counts": counts})
    return [str(out_dir / entry["name"]) for entry in entries], samples
