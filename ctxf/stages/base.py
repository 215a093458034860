"""What every training method (stage) is handed, and what it must provide to the trainer.

A method owns its models and the algorithm of one step; it receives a `Runtime` (the config,
the device, per-step random generators and builders for engines and sequence-parallel models)
and never sees a process group. The trainer owns everything around the step: data, cadence,
checkpoints, signals, logging.

    method.train_step(batch, step, micro) -> metrics    one micro-batch: forward, backward, engine step
    method.engines                                      {role: DeepSpeed engine} it trains
    method.stepped_roles(step)                          the roles whose optimizer steps at `step` (default all)
    method.ema_roles                                    the roles the trainer keeps an EMA of (default all)
    method.sample(batch) -> latents or None             a short clip for the logs (every rank runs it)
    method.state_dict() / load_state_dict(state)        per-rank algorithm state for exact resume
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from ctxf.config import Config
from ctxf.data.collate import Batch


@dataclass
class Runtime:
    config: Config
    device: torch.device
    data_parallel_rank: int
    build_engine: Callable[[nn.Module, str], Any]  # (model, role) -> a DeepSpeed engine
    sequence_parallel: Callable[[nn.Module], nn.Module]  # WanDiT -> the same model, sequence-sharded
    frozen_teacher: Callable[[nn.Module], Any] | None = None  # WanDiT -> a frozen, sharded, no-grad teacher

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.config.train.precision == "bf16" else torch.float32

    def step_generator(self, step: int, micro: int, purpose: str = "") -> torch.Generator:
        """Randomness of one micro-batch: the same on the ranks sharing a sample (a context-parallel
        group), different across data-parallel ranks, and a pure function of the step (exact resume)."""
        return _generator(self.config.train.seed, step, micro, self.data_parallel_rank, purpose)

    def shared_generator(self, step: int, purpose: str = "") -> torch.Generator:
        """Randomness every rank of the job draws alike (e.g. a denoising exit step)."""
        return _generator(self.config.train.seed, step, -1, -1, purpose)


def _generator(*parts: Any) -> torch.Generator:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class TrainingMethod:
    """Base of the stage methods: engine bookkeeping and the phase clock."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.config = runtime.config
        self.engines: dict[str, Any] = {}
        self.lora_roles: dict[str, dict] = {}  # role -> {"rank", "alpha", "targets"} for adapted roles
        self.ema_roles: tuple[str, ...] | None = None  # None: every engine
        self.phase_seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] += time.perf_counter() - started

    def optimize(self, role: str, loss: torch.Tensor) -> None:
        """Backward and (at the accumulation boundary) optimizer step of `role`'s engine, timed."""
        engine = self.engines[role]
        with self.phase("backward"):
            engine.backward(loss)
        with self.phase("optimizer"):
            engine.step()

    def stepped_roles(self, step: int) -> tuple[str, ...]:
        """Roles whose engine takes a backward and an optimizer step at `step` (e.g. DMD's
        generator trains every Nth step only)."""
        return tuple(self.engines)

    def take_phase_seconds(self) -> dict[str, float]:
        seconds, self.phase_seconds = dict(self.phase_seconds), defaultdict(float)
        return seconds

    def train_step(self, batch: Batch, step: int, micro: int) -> dict[str, float]:
        raise NotImplementedError

    def sample(self, batch: Batch) -> torch.Tensor | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
