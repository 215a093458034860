"""`KVMemory`: one role's KV cache with explicit reset / append / view.

The student's generator calls `view()` before every forward of a chunk (the memory decides the
RoPE positions of both the cached frames and the new ones) and `append()` once a chunk is
denoised, with the keys and values of its clean refresh pass and the latents that pass read.
Those latents stay with their frame while it is cached, so the cache can be recomputed under
another prompt (`held_latents()`, then `overwrite()`). All writes and evictions happen here;
the attention forward only reads.
"""

from __future__ import annotations

import torch

from ctxf.config import Config
from ctxf.memory.policies import FrameRecord, MemoryPolicy, build_policy
from ctxf.memory.store import FrameKVStore
from ctxf.memory.view import MemoryView


class KVMemory:
    def __init__(self, policy: MemoryPolicy, num_layers: int, max_append_frames: int):
        self.policy = policy
        self.max_append_frames = max_append_frames
        capacity = policy.capacity_frames
        self.store = FrameKVStore(num_layers, None if capacity is None else capacity + max_append_frames)
        self.reset()

    def reset(self) -> None:
        self.store.reset()
        self.frames: list[FrameRecord] = []
        self.num_frames_seen = 0
        self.num_appends = 0
        self.latents: dict[int, torch.Tensor] = {}  # absolute frame index -> [B, C, H, W] its refresh read
        self.append_of: dict[int, int] = {}  # absolute frame index -> which append() brought it
        self._view: MemoryView | None = None

    @property
    def frame_indices(self) -> list[int]:
        """Absolute indices of the cached frames, in attention order."""
        return [f.index for f in self.frames]

    @property
    def segments(self) -> list[str]:
        return [f.segment for f in self.frames]

    def cache_bytes(self) -> int:
        """Bytes of keys and values held for the cached frames."""
        return self.store.used_bytes()

    def append(self, kv: list[tuple[torch.Tensor, torch.Tensor]], num_frames: int,
               latents: torch.Tensor | None = None) -> None:
        """Store the next `num_frames` frames (per layer (k, v) `[B, num_frames * S_f, H, D]`, un-rotated)
        and let the policy evict. `latents [B, C, num_frames, H, W]`: what the pass that computed
        them read, kept for `held_latents()`."""
        for start in range(0, num_frames, self.max_append_frames):
            count = min(self.max_append_frames, num_frames - start)
            piece = []
            for k, v in kv:
                tokens = k.shape[1] // num_frames
                piece.append((k[:, start * tokens:(start + count) * tokens], v[:, start * tokens:(start + count) * tokens]))
            for i in range(count):
                if latents is not None:
                    self.latents[self.num_frames_seen + i] = latents[:, :, start + i].detach().clone()
                self.append_of[self.num_frames_seen + i] = self.num_appends
            self._append_piece(piece, count)
        self.num_appends += 1

    def _append_piece(self, kv: list[tuple[torch.Tensor, torch.Tensor]], num_frames: int) -> None:
        mean_keys = _mean_keys(kv, num_frames)
        new = [FrameRecord(index=self.num_frames_seen + i, mean_key=mean_keys[i]) for i in range(num_frames)]
        candidates = self.frames + new
        self.store.append(kv, num_frames)
        kept = self.policy.admit(list(self.frames), new)
        slot_of = {id(frame): slot for slot, frame in enumerate(candidates)}
        self.store.keep([slot_of[id(frame)] for frame in kept])
        self.frames = kept
        kept_indices = set(self.frame_indices)
        self.latents = {index: x for index, x in self.latents.items() if index in kept_indices}
        self.append_of = {index: n for index, n in self.append_of.items() if index in kept_indices}
        self.num_frames_seen += num_frames
        self._view = None

    def held_latents(self) -> tuple[torch.Tensor, list[int]]:
        """The cached frames' latents `[B, C, n, H, W]` in attention order, and for each the
        append() it came in (frames of one append were computed together)."""
        missing = [i for i in self.frame_indices if i not in self.latents]
        if missing:
            raise ValueError(f"cached frames {missing} were appended without their latents")
        indices = self.frame_indices
        return torch.stack([self.latents[i] for i in indices], dim=2), [self.append_of[i] for i in indices]

    def overwrite(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """New keys and values for the same cached frames (per layer `[B, n * S_f, H, D]`, attention
        order); their mean keys follow, so later keyframe decisions see the new keys."""
        self.store.overwrite(kv)
        for frame, mean_key in zip(self.frames, _mean_keys(kv, len(self.frames))):
            frame.mean_key = mean_key
        self._view = None

    def view(self, num_query_frames: int) -> MemoryView:
        """Cached keys/values and the RoPE positions of the cached and of the next frames."""
        if self._view is not None and self._view.query_frame_positions.numel() == num_query_frames:
            return self._view
        key_positions, query_positions = self.policy.positions(self.frames, num_query_frames, self.num_frames_seen)
        layers = [self.store.layer(i) for i in range(self.store.num_layers)] if self.frames else []
        self._view = MemoryView(keys=[k for k, _ in layers], values=[v for _, v in layers],
                                key_frame_positions=torch.tensor(key_positions, dtype=torch.long),
                                query_frame_positions=torch.tensor(query_positions, dtype=torch.long))
        return self._view


def _mean_keys(kv: list[tuple[torch.Tensor, torch.Tensor]], num_frames: int) -> torch.Tensor:
    """Per frame, the mean key over batch and tokens of every layer, `[num_frames, L * H * D]`."""
    batch, tokens, heads, head_dim = kv[0][0].shape
    # per layer [B, n*S_f, H, D] -> [n, H*D] mean over batch and tokens; layers side by side [n, L*H*D]
    return torch.cat([k.detach().float().reshape(batch, num_frames, tokens // num_frames, heads * head_dim)
                      .mean(dim=(0, 2)) for k, _ in kv], dim=1)


def build_memory(cfg: Config) -> KVMemory:
    """The student's memory as configured (`memory.policy` and its sizes)."""
    return KVMemory(build_policy(cfg.memory), cfg.model.num_layers, cfg.video.num_frames_per_block)
