"""The training loop: steps and accumulation, cadence of logs, samples and checkpoints, resume,
signals and the non-finite guard. It knows no algorithm: `method.train_step` does one micro-batch.

Per step: `gradient_accumulation_steps` micro-batches (DeepSpeed applies the optimizer at the
last), then one reduction of the metrics, the stop request and nothing else
(`parallel.step_sync`). Then, at their cadence, scalars, a sample and a checkpoint.

- Stopping: SIGTERM or SIGUSR1 on any rank sets a flag; the step finishes, the reduction tells
  every rank, all save and return; the process exits 0.
- Non-finite steps: ZeRO-3 computes the global gradient norm over all ranks and skips the
  optimizer step, on every rank, when it is NaN or infinite (a NaN loss on one rank makes every
  partition's gradient NaN). The trainer counts such steps, names the rank and value of a
  non-finite loss, and aborts after `train.max_bad_steps` in a row.
- Exact resume: all randomness of a step comes from generators seeded by (seed, step, micro,
  data-parallel rank) (`Runtime.step_generator`); the checkpoint holds the engines, the loader
  position, the method's state (buffers), the EMA and the process RNG states.
- Roles: a method may step only some engines at a step (`method.stepped_roles(step)`, e.g. DMD's
  generator every Nth step); the skip check, the EMA update and the logged gradient norm follow
  those. The EMA covers `method.ema_roles` (default: every engine).
"""

from __future__ import annotations

import json
import random
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctxf.ckpt.training_io import load_training_step, save_training_step
from ctxf.config import Config
from ctxf.parallel.ema import PartitionedEMA
from ctxf.parallel.step_sync import nonfinite_ranks, reduce_step
from ctxf.run_log import RunLog
from ctxf.stages.base import TrainingMethod


class TrainingAborted(RuntimeError):
    """Too many non-finite steps in a row; the message names the step, the rank and the value."""


class StopRequest:
    """Remembers the first SIGTERM / SIGUSR1 until the loop can act on it."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainResult:
    status: str  # complete | interrupted
    step: int
    skipped_steps: int
    losses: dict[int, float]  # step -> mean loss over ranks (the first loss/ metric)


class Trainer:
    def __init__(self, config: Config, method: TrainingMethod, loader, *, rank: int, world_size: int,
                 gradient_accumulation_steps: int, zero_group=None):
        self.config, self.method, self.loader = config, method, loader
        self.rank, self.world_size = rank, world_size
        self.accumulation = gradient_accumulation_steps
        self.run_dir = Path(config.train.output_dir)
        self.checkpoints_dir = self.run_dir / "checkpoints"
        train = config.train
        ema_roles = method.ema_roles if method.ema_roles is not None else tuple(method.engines)
        self.emas = {role: PartitionedEMA(method.engines[role].module, train.ema_decay, zero_group)
                     for role in ema_roles} if train.ema_decay > 0 else {}
        self.step = 0
        self.skipped_steps = 0
        self.bad_in_row = 0
        self._codec = None

    # ------------------------------------------------------------------ state

    def trainer_state(self) -> dict:
        return {"step": self.step, "skipped_steps": self.skipped_steps, "bad_in_row": self.bad_in_row,
                "loader": self.loader.state_dict(), "method": self.method.state_dict(),
                "ema": {role: ema.state_dict() for role, ema in self.emas.items()},
                "rng": {"torch": torch.get_rng_state(), "python": _python_rng_state(),
                        "numpy": _numpy_rng_state()}}

    def restore(self, step_dir: Path) -> None:
        state = load_training_step(step_dir, self.method, rank=self.rank, world_size=self.world_size)
        self.step, self.skipped_steps, self.bad_in_row = state["step"], state["skipped_steps"], state["bad_in_row"]
        self.loader.load_state_dict(state["loader"])
        self.method.load_state_dict(state["method"])
        for role, ema in self.emas.items():
            ema.load_state_dict(state["ema"][role])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(_tuples(state["rng"]["python"]))
        name, keys, position, has_gauss, cached = state["rng"]["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))

    def save(self) -> Path:
        manifest = {"stage": self.config.train.stage, "world_size": self.world_size,
                    "default_role": next(iter(self.method.engines)), "config": self.config.to_dict()}
        return save_training_step(self.checkpoints_dir, self.step, self.method, self.emas, self.trainer_state(),
                                  rank=self.rank, manifest=manifest, keep=self.config.train.keep_checkpoints)

    # ------------------------------------------------------------------ loop

    def run(self, resume_from: Path | None = None, stop: StopRequest | None = None) -> TrainResult:
        """Train to `train.num_steps`. `stop`: a StopRequest installed earlier (the entry point
        installs it before the process group starts, so a signal during start-up is not lost)."""
        train = self.config.train
        restore_seconds = 0.0
        if resume_from is not None:
            started = time.perf_counter()
            self.restore(resume_from)
            restore_seconds = time.perf_counter() - started
        log = RunLog(self.run_dir, train.num_steps, self.step, enabled=self.rank == 0)
        if resume_from is not None:
            log.info(f"resumed from {resume_from} at step {self.step} ({restore_seconds:.1f} s)")
        self._write_status("running", None)
        stop = stop or StopRequest()
        batches = self.loader.batches()
        losses: dict[int, float] = {}
        checkpoint_seconds = 0.0
        status = "complete"
        try:
            while self.step < train.num_steps:
                metrics, batch = self._one_step(batches)
                metrics["time/checkpoint"] = checkpoint_seconds
                metrics["time/restore"], restore_seconds = restore_seconds, 0.0
                local_loss = sum(v for k, v in metrics.items() if k.startswith("loss/"))
                reduced, stop_requested = reduce_step(metrics, stop.signal_name is not None)
                self.step += 1
                self._guard(local_loss, applied=bool(metrics["step_applied"]), grad_norm=metrics["grad_norm"])
                losses[self.step] = next((v for k, v in sorted(reduced.items()) if k.startswith("loss/")), float("nan"))
                log.advance(self.step)
                if self.step % train.log_every == 0 or self.step == train.num_steps or stop_requested:
                    reduced["steps_skipped"] = float(self.skipped_steps)
                    log.scalars(self.step, reduced, train.num_steps)
                if train.sample_every and self.step % train.sample_every == 0:
                    self._log_sample(log, batch)
                checkpoint_seconds = 0.0
                if self.step % train.checkpoint_every == 0 or self.step == train.num_steps or stop_requested:
                    started = time.perf_counter()
                    step_dir = self.save()
                    checkpoint_seconds = time.perf_counter() - started
                    log.info(f"saved checkpoint step {self.step} -> {step_dir} ({checkpoint_seconds:.1f} s)")
                if stop_requested:
                    status = "interrupted"
                    log.info(f"stop requested ({stop.signal_name or 'by another rank'}): saved step {self.step}, "
                             f"resume with --resume auto")
                    break
        finally:
            stop.restore()
            log.close()
        self._write_status(status, stop.signal_name)
        return TrainResult(status, self.step, self.skipped_steps, losses)

    def _one_step(self, batches) -> tuple[dict[str, float], object]:
        started = time.perf_counter()
        data_seconds = 0.0
        totals: dict[str, float] = {}
        batch = None
        for micro in range(self.accumulation):
            fetch = time.perf_counter()
            batch = next(batches)
            data_seconds += time.perf_counter() - fetch
            for name, value in self.method.train_step(batch, self.step, micro).items():
                totals[name] = totals.get(name, 0.0) + value / self.accumulation
        stepped = {role: self.method.engines[role] for role in self.method.stepped_roles(self.step)}
        applied = all(engine.was_step_applied() for engine in stepped.values())
        if applied and self.step + 1 >= self.config.train.ema_start_step:
            for role, ema in self.emas.items():
                if role in stepped:
                    ema.update()
        elapsed = time.perf_counter() - started
        engine = next(iter(stepped.values()))
        metrics = {**totals, **{f"time/{k}": v for k, v in self.method.take_phase_seconds().items()},
                   "time/data": data_seconds, "time/step": elapsed,
                   "samples_per_s": self.config.train.global_batch_size / elapsed,  # the whole job's rate
                   "lr": float(engine.get_lr()[0]), "memory/peak_mb": _peak_memory_mb(),
                   "data/skipped": float(sum(self.loader.counters.values())), "step_applied": float(applied)}
        norm = engine.get_global_grad_norm()
        metrics["grad_norm"] = float(norm) if norm is not None else 0.0
        return metrics, batch

    def _guard(self, local_loss: float, applied: bool, grad_norm: float) -> None:
        """Called once `self.step` counts the step just run; `applied` and `grad_norm` are that
        step's (from the engines it stepped)."""
        if applied:
            self.bad_in_row = 0
            return
        self.skipped_steps += 1
        self.bad_in_row += 1
        culprits = nonfinite_ranks(local_loss)
        if culprits:
            what = ", ".join(f"rank {rank} loss {value}" for rank, value in culprits)
        else:
            what = f"gradient norm {grad_norm} (losses finite)"
        message = (f"step {self.step}: non-finite {what}; the optimizer step was skipped on all ranks "
                   f"({self.bad_in_row} in a row, {self.skipped_steps} in total)")
        if self.rank == 0:
            print(f"warning: {message}", flush=True)
        if self.bad_in_row >= self.config.train.max_bad_steps:
            raise TrainingAborted(f"{message}; aborting after train.max_bad_steps={self.config.train.max_bad_steps} "
                                  f"in a row: lower the learning rate, check the data, or resume from an earlier "
                                  f"checkpoint")

    def _log_sample(self, log: RunLog, batch) -> None:
        latents = self.method.sample(batch)
        if latents is None or self.rank != 0:
            return
        from ctxf.models.codec import build_codec, video_to_uint8

        if self._codec is None:
            self._codec = build_codec(self.config.codec)
        frames = video_to_uint8(self._codec.decode(latents.float()))[0]
        log.sample(self.step, frames)

    def _write_status(self, status: str, signal_name: str | None) -> None:
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            payload = {"status": status, "step": self.step, "signal": signal_name}
            (self.run_dir / "run_status.json").write_text(json.dumps(payload) + "\n")


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _python_rng_state() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _tuples(saved: list) -> tuple:
    version, state, gauss = saved
    return version, tuple(state), gauss


def _numpy_rng_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
