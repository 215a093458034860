"""The built-in training data: the synthetic curtain world, generated once into a cache directory.

`data.shards` empty means "the embedded default": train shards of the curtain world for the
configured codec, latent size and text encoder, written by `data_pipeline.make_curtain` into
`<data.cache_dir>/curtain-<fingerprint>/train/` the first time a run needs them. Several
processes may start at once (every rank of a job): one generates under a file lock, the others
wait for it, and the directory appears only when complete (written elsewhere, then renamed).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from ctxf.config import Config

SHARDS_PER_SPLIT = 8  # enough for 2 ranks x 4 loader workers to each read whole shards
MANIFEST = "manifest.json"


def cache_root(cfg: Config) -> Path:
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ctxf"


def default_shards_dir(cfg: Config) -> Path:
    """Where the curtain shards for this config live (they may not exist yet)."""
    recipe = {"codec": cfg.codec.kind, "pixel_patch": cfg.codec.pixel_patch, "latent": cfg.video.latent_height,
              "text": [cfg.text.kind, cfg.text.max_length, cfg.text.seed, cfg.model.text_dim],
              "clips": cfg.data.default_clips, "seed": cfg.data.seed, "version": 1}
    if cfg.data.default_max_gap:
        recipe["max_gap"] = cfg.data.default_max_gap
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root(cfg) / f"curtain-{digest}"


def curtain_spec(cfg: Config):
    """The built-in world for this config: the world's defaults, or gaps up to data.default_max_gap in clips
    just long enough for the longest timeline (so more of every clip is around its curtain)."""
    from data_pipeline.curtain import CurtainSpec

    frame_size = cfg.video.latent_height * cfg.codec.pixel_patch
    if not cfg.data.default_max_gap:
        return CurtainSpec(frame_size=frame_size)
    return CurtainSpec.fitted(frame_size=frame_size, gap_range=(1, cfg.data.default_max_gap))


def ensure_default_shards(cfg: Config) -> Path:
    """The manifest of the built-in train shards, generating them when absent."""
    if cfg.codec.kind != "pixel" or cfg.video.latent_height != cfg.video.latent_width:
        raise ValueError(f"data.shards is empty and the built-in curtain world needs the pixel codec and square "
                         f"latents (config has codec.kind={cfg.codec.kind}); set data.shards to your shards")
    root = default_shards_dir(cfg)
    manifest = root / "train" / MANIFEST
    if manifest.is_file():
        return manifest
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not manifest.is_file():
            _generate(cfg, root)
    return manifest


def _generate(cfg: Config, root: Path) -> None:
    from data_pipeline.clip_encoding import ClipEncoder
    from data_pipeline.make_curtain import write_split

    print(f"generating the built-in curtain world ({cfg.data.default_clips} clips) into {root}", flush=True)
    staging = root.with_name(root.name + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    spec = curtain_spec(cfg)
    per_shard = max(1, -(-cfg.data.default_clips // SHARDS_PER_SPLIT))
    write_split(spec, cfg.data.seed, "train", cfg.data.default_clips, staging / "train", ClipEncoder(cfg),
                max_samples=per_shard, settings={"created_for": "ctxf built-in training data"})
    os.replace(staging, root)
