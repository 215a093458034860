"""Run a function on N gloo processes on 127.0.0.1 and collect what each returns.

    results = run_workers(2, check_something, arg1, arg2)   # one result per rank, rank order

Each worker is one thread (OMP_NUM_THREADS=1, torch.set_num_threads(1)), joins a gloo process
group on a free port, calls `fn(*args)` and returns its (picklable) result. An exception in any
worker kills the others (they would wait in a collective forever) and fails the test with the
worker's traceback; so does a worker that dies or runs past `timeout`.

Workers are forked from a forkserver that has torch, the model and DeepSpeed imported already,
so a run costs a fork, not a fresh interpreter. DeepSpeed compiles a shared-memory comm op when
it starts its process group; `prebuild_deepspeed_ops` compiles it once, in the test process, into
the repo's `.torch_extensions/` (gitignored), before any worker runs: a worker killed by its
timeout in the middle of that compile would leave torch's build lock behind and every later
worker would wait on it.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
TORCH_EXTENSIONS_DIR = REPO / ".torch_extensions"
_PRELOAD = ["torch", "torch.distributed", "ctxf.models.wan", "deepspeed"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prebuild_deepspeed_ops() -> None:
    """Compile (or find cached) DeepSpeed's CPU shared-memory comm op, with no timeout around it."""
    global _OPS_BUILT
    if _OPS_BUILT:
        return
    os.environ["TORCH_EXTENSIONS_DIR"] = str(TORCH_EXTENSIONS_DIR)
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()
    _OPS_BUILT = True


_OPS_BUILT = False


def _context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _worker(fn: Callable, rank: int, world_size: int, port: int, result_dir: str, args: tuple) -> None:
    os.environ.update(OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(TORCH_EXTENSIONS_DIR), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), PYTHONPATH=str(REPO))
    import torch

    from ctxf.parallel.launch import LaunchInfo, init_distributed, shutdown

    torch.set_num_threads(1)
    result_path = Path(result_dir) / f"rank{rank}.pkl"
    try:
        init_distributed("gloo", LaunchInfo(rank, world_size, rank, "127.0.0.1", port))
        value = fn(*args)
        result_path.write_bytes(pickle.dumps(("ok", value)))
    except BaseException:
        result_path.write_bytes(pickle.dumps(("error", traceback.format_exc())))
        shutdown(exit_code=1)
    shutdown(exit_code=0)


class WorkerFailure(AssertionError):
    pass


def run_workers(world_size: int, fn: Callable, *args: Any, timeout: float = 120.0) -> list[Any]:
    """`fn(*args)` on `world_size` gloo ranks; returns the results in rank order."""
    prebuild_deepspeed_ops()
    context = _context()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ctxf-workers-") as result_dir:
        processes = [context.Process(target=_worker, args=(fn, rank, world_size, port, result_dir, args),
                                     name=f"{fn.__name__}-rank{rank}") for rank in range(world_size)]
        for process in processes:
            process.start()
        try:
            _wait(processes, Path(result_dir), timeout)
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                process.join()
        return [_read(Path(result_dir), rank)[1] for rank in range(world_size)]


def _wait(processes: list, result_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        codes = [process.exitcode for process in processes]
        failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            raise WorkerFailure(_describe_failure(result_dir, failed, codes))
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            raise WorkerFailure(f"workers still running after {timeout:.0f} s (exit codes {codes}); a rank is "
                                f"probably waiting in a collective that another rank never entered")
        time.sleep(0.02)


def _describe_failure(result_dir: Path, failed: list[int], codes: list) -> str:
    parts = [f"worker exit codes {codes}"]
    for rank in failed:
        status, detail = _read(result_dir, rank)
        parts.append(f"--- rank {rank} ---\n{detail}" if status == "error" else f"--- rank {rank}: {detail}")
    return "\n".join(parts)


def _read(result_dir: Path, rank: int) -> tuple[str, Any]:
    path = result_dir / f"rank{rank}.pkl"
    if not path.exists():
        return "missing", "exited without a result (crashed or killed)"
    return pickle.loads(path.read_bytes())
