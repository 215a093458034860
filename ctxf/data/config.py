"""Schema of the `data` config section (the training loader).

The batch size is not here: the loader takes `train.micro_batch_size`, the one number DeepSpeed
and the loader must agree on.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    shards: str = field(default="", metadata={"help": "shard source: paths, brace pattern, pipe: command or "
                                                      "manifest.json; '::' joins several; empty: the built-in "
                                                      "curtain world, generated into data.cache_dir on first use"})
    cache_dir: str = field(default="", metadata={"help": "where the built-in curtain shards are generated "
                                                         "(empty: $XDG_CACHE_HOME/ctxf, else ~/.cache/ctxf)"})
    default_clips: int = field(default=64, metadata={"help": "clips of the built-in curtain world"})
    default_max_gap: int = field(default=0, metadata={"help": "longest curtain gap of the built-in world, in latent "
                                                               "frames; clips are then as long as its longest "
                                                               "timeline (0: the world's default, 120 frames)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    shuffle_buffer: int = field(default=64, metadata={"help": "samples held for shuffling (0: no shuffle)"})
    seed: int = field(default=0, metadata={"help": "shuffle seed; with the epoch it fixes the order"})
    num_frames: int = field(default=0, metadata={"help": "latent frames per sample: a random window of this "
                                                         "length (0: whole clips, of one length per batch)"})
    drop_last: bool = field(default=False, metadata={"help": "drop each reader's last partial batch of an epoch"})
    load_latents: bool = field(default=True, metadata={"help": "read latents (false: text embeddings only)"})
    verify_checksums: bool = field(default=True, metadata={"help": "check each shard listed in a manifest.json "
                                                                   "against its sha256 before reading it, skipping "
                                                                   "and counting altered ones (false: faster)"})
