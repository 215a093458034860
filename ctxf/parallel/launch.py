"""Joining the job: the default process group from the launcher's variables, and a clean exit.

The launcher variables (torchrun / the deepspeed launcher: RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT; srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) are read once, here,
at start-up; nothing else in the project reads the environment.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def launch_info(environ: dict[str, str] | None = None) -> LaunchInfo:
    """Rank, world size and rendezvous address from torchrun / deepspeed / srun variables."""
    env = os.environ if environ is None else environ

    def first(*names: str, default: str | None = None) -> str:
        for name in names:
            if name in env:
                return env[name]
        if default is None:
            raise RuntimeError(f"none of {', '.join(names)} is set: start the job with torchrun, the deepspeed "
                               f"launcher or srun (or run one process with --world-size for a dry run)")
        return default

    return LaunchInfo(rank=int(first("RANK", "SLURM_PROCID", default="0")),
                      world_size=int(first("WORLD_SIZE", "SLURM_NTASKS", default="1")),
                      local_rank=int(first("LOCAL_RANK", "SLURM_LOCALID", default="0")),
                      master_addr=first("MASTER_ADDR", default="127.0.0.1"),
                      master_port=int(first("MASTER_PORT", default="29500")))


def configure_cpu_threads(info: LaunchInfo, environ: dict[str, str] | None = None) -> int:
    """Without CUDA, share the cores among this node's ranks unless OMP_NUM_THREADS says otherwise
    (the deepspeed launcher does not set it, and ranks fighting over threads run many times slower)."""
    env = os.environ if environ is None else environ
    if torch.cuda.is_available():
        return torch.get_num_threads()
    if "OMP_NUM_THREADS" in env:
        threads = max(1, int(env["OMP_NUM_THREADS"]))
    else:
        local_ranks = int(env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or env.get("SLURM_NTASKS_PER_NODE")
                          or info.world_size)
        threads = max(1, (os.cpu_count() or 1) // max(1, local_ranks))
    torch.set_num_threads(threads)
    return threads


def resolve_backend(name: str) -> str:
    """`auto` is nccl where CUDA exists, gloo otherwise."""
    if name == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if name not in ("nccl", "gloo"):
        raise ValueError(f"parallel.backend={name!r}: choose auto, nccl or gloo")
    if name == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("parallel.backend=nccl needs CUDA; use gloo (or auto) on CPU")
    return name


def init_distributed(backend: str = "auto", info: LaunchInfo | None = None,
                     timeout: timedelta = timedelta(minutes=10)) -> LaunchInfo:
    """Initialise the default process group (once); returns where this process sits."""
    info = info or launch_info()
    # DeepSpeed reads these itself (LOCAL_RANK above all); srun sets only SLURM_* names
    for name, value in (("RANK", info.rank), ("WORLD_SIZE", info.world_size), ("LOCAL_RANK", info.local_rank),
                        ("MASTER_ADDR", info.master_addr), ("MASTER_PORT", info.master_port)):
        os.environ.setdefault(name, str(value))
    backend = resolve_backend(backend)
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=f"tcp://{info.master_addr}:{info.master_port}",
                                rank=info.rank, world_size=info.world_size, timeout=timeout)
    return info


def shutdown(exit_code: int = 0) -> None:
    """Leave the job and end the process: barrier, destroy the groups, flush, `os._exit`.

    Ending a DeepSpeed process by returning from main sometimes aborts with "terminate called
    without an active exception" after the work is done; exiting this way does not.
    """
    if dist.is_initialized():
        if exit_code == 0:
            dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
