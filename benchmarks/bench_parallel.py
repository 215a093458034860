"""Distributed scaling on CPU/gloo (docs/benchmarks.md), measured side by side in one run.

1. Context-parallel teacher: peak tensor memory per rank of one teacher forward for cp = 1, 2, 4
   on the same sequence (8,192 tokens by default, long enough for the blocks to dominate), its
   exactness (max |difference| against cp = 1) and the dry run's estimate of it
   (ctxf/parallel/estimates.py) next to the measurement.
2. ZeRO-3: parameter + optimizer bytes held per rank after one step, for 1, 2, 4 ranks.
3. The Wan2.1-1.3B projection at --world-size GPUs from the dry run's formulas
   (ctxf/parallel/estimates.py).
Prints ratios, writes JSON and a PNG next to each other. Memory is counted, not sampled: a
TorchDispatchMode adds up the storage of every tensor an op allocates while it is alive (model
weights and inputs excluded), so the numbers do not depend on the machine's noise.

    python benchmarks/bench_parallel.py [--frames 128] [--out outputs/bench] [--world-size 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import json
import os
import socket
import tempfile
import warnings
import weakref
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ctxf.config import load_config
from ctxf.models.wan import WanDiT
from ctxf.parallel.estimates import estimate_memory
from ctxf.parallel.launch import LaunchInfo, init_distributed, shutdown
from ctxf.parallel.plan import plan
from ctxf.parallel.summary import projection_table
from ctxf.parallel.topology import Topology

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks directory is not a package
from bench_report import pyplot, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEGREES = [1, 2, 4]
FULL_HISTORY_SECONDS = 120  # the teacher on the whole history of a 2-minute video
# a Wan-shaped DiT small enough for a CPU, with 4 heads so Ulysses reaches cp = 4
BENCH_MODEL = ["model.num_heads=4", "model.head_dim=16", "model.num_layers=2", "model.ffn_dim=256",
               "video.latent_height=16", "video.latent_width=16"]


class LiveTensorBytes(TorchDispatchMode):
    """Current and peak bytes of tensor storage allocated by ops inside the mode and still alive."""

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.external = {t.untyped_storage().data_ptr() for t in existing}
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tracked tensors using it]
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address == 0 or address in self.external:
            return
        entry = self.live.get(address)
        if entry is None:
            entry = self.live[address] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, address)

    def _release(self, address: int) -> None:
        entry = self.live[address]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[address]


def _worker(rank: int, world_size: int, port: int, result_dir: str, job: str, options: dict) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # DeepSpeed's calls of renamed torch collectives
    torch.set_num_threads(1)
    init_distributed("gloo", LaunchInfo(rank, world_size, rank, "127.0.0.1", port))
    result = JOBS[job](world_size, options)
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(result))
    shutdown(0)


def teacher_config(degree: int, frames: int):
    return load_config("tiny", BENCH_MODEL + [f"parallel.context_parallel_degree={degree}",
                                              f"parallel.teacher_num_frames={frames}", "train.global_batch_size=1"])


def teacher_forward_memory(world_size: int, options: dict) -> dict:
    from ctxf.parallel.teacher import FrozenTeacher

    config = teacher_config(world_size, options["frames"])
    torch.manual_seed(0)
    model = WanDiT(config.model)
    generator = torch.Generator().manual_seed(1)
    m, v = config.model, config.video
    latents = torch.randn(1, m.in_channels, options["frames"], v.latent_height, v.latent_width, generator=generator)
    timestep = torch.full((1,), 500.0)
    text = torch.randn(1, config.text.max_length, m.text_dim, generator=generator)
    teacher = FrozenTeacher(model, Topology.build(config))
    tracker = LiveTensorBytes([*model.parameters(), latents, timestep, text])
    with tracker:
        out = teacher(latents, timestep, text)
    return {"peak_bytes": tracker.peak, "tokens": options["frames"] * config.frame_seq_len,
            "output": out.flatten().tolist() if torch.distributed.get_rank() == 0 else None}


def zero3_bytes(world_size: int, options: dict) -> dict:
    from ctxf.parallel.engines import build_engine

    config = load_config("tiny", ["model.num_heads=4", "model.head_dim=32", "model.num_layers=4",
                                  "model.ffn_dim=512", f"train.global_batch_size={world_size}"])
    torch.manual_seed(0)
    engine = build_engine(WanDiT(config.model), "student", config, Topology.build(config))
    m, v = config.model, config.video
    latents = torch.randn(1, m.in_channels, 3, v.latent_height, v.latent_width)
    out = engine(latents, torch.full((1,), 500.0), torch.randn(1, config.text.max_length, m.text_dim))
    engine.backward(out.square().mean())
    engine.step()
    params = _unique_bytes(p.ds_tensor for p in engine.module.parameters())
    master = _unique_bytes(engine.optimizer.fp32_partitioned_groups_flat)
    states = _unique_bytes(t for state in engine.optimizer.optimizer.state.values()
                           for t in state.values() if isinstance(t, torch.Tensor) and t.dim() > 0)
    return {"parameters": params, "fp32_master": master, "optimizer_states": states,
            "total": _unique_bytes([*(p.ds_tensor for p in engine.module.parameters()),
                                    *engine.optimizer.fp32_partitioned_groups_flat,
                                    *(t for state in engine.optimizer.optimizer.state.values()
                                      for t in state.values() if isinstance(t, torch.Tensor) and t.dim() > 0)]),
            "model_parameters": sum(p.ds_numel for p in engine.module.parameters())}


def _unique_bytes(tensors) -> int:
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


JOBS = {"teacher": teacher_forward_memory, "zero3": zero3_bytes}


def run(job: str, world_size: int, options: dict) -> list[dict]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as result_dir:
        mp.spawn(_worker, args=(world_size, port, result_dir, job, options), nprocs=world_size, join=True)
        return [json.loads(Path(result_dir, f"rank{r}.json").read_text()) for r in range(world_size)]


def plot(results: dict, path: Path) -> None:
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    teacher = results["teacher"]
    left.plot(DEGREES, [teacher[str(d)]["peak_bytes_per_rank"] / 1e6 for d in DEGREES], "o-", label="measured")
    left.plot(DEGREES, [teacher[str(d)]["estimate_bytes"] / 1e6 for d in DEGREES], "x:", label="estimate")
    left.plot(DEGREES, [teacher["1"]["peak_bytes_per_rank"] / 1e6 / d for d in DEGREES], "--", label="1 / cp")
    left.set(xlabel="context-parallel degree", ylabel="peak MB per rank", xticks=DEGREES,
             title=f"teacher forward, {teacher['1']['tokens']} tokens")
    zero = results["zero3"]
    right.plot(DEGREES, [zero[str(n)]["total"] / 1e6 for n in DEGREES], "o-", label="measured")
    right.plot(DEGREES, [zero["1"]["total"] / 1e6 / n for n in DEGREES], "--", label="1 / ranks")
    right.set(xlabel="ranks", ylabel="MB per rank", xticks=DEGREES, title="ZeRO-3 parameters + optimizer")
    for axis in (left, right):
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=128,
                        help="latent frames of the teacher sequence (64 tokens each)")
    parser.add_argument("--world-size", type=int, default=64, help="GPUs of the Wan2.1-1.3B projection")
    parser.add_argument("--out", default="outputs/bench", help="directory for the JSON and the PNG")
    args = parser.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))  # DeepSpeed's comm op cache
    os.environ["OMP_NUM_THREADS"] = "1"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    results: dict = {"teacher": {}, "zero3": {}}
    reference = None
    print(f"teacher forward, {args.frames} latent frames, peak tensor memory per rank")
    for degree in DEGREES:
        ranks = run("teacher", degree, {"frames": args.frames})
        output = torch.tensor(ranks[0]["output"])
        reference = output if reference is None else reference
        peak = max(r["peak_bytes"] for r in ranks)
        config = teacher_config(degree, args.frames)
        estimate = estimate_memory(config, plan(degree, config)).teacher_forward_activations
        results["teacher"][str(degree)] = {"peak_bytes_per_rank": peak, "tokens": ranks[0]["tokens"],
                                           "estimate_bytes": estimate,
                                           "max_abs_diff_vs_cp1": (output - reference).abs().max().item()}
        row = results["teacher"][str(degree)]
        print(f"  cp={degree}: {peak / 1e6:8.2f} MB per rank, ratio to cp=1 "
              f"{peak / results['teacher']['1']['peak_bytes_per_rank']:.3f} (1/cp = {1 / degree:.3f}), "
              f"estimate {estimate / 1e6:.2f} MB (x{estimate / peak:.3f} of measured), "
              f"max |out - out(cp=1)| = {row['max_abs_diff_vs_cp1']:.1e}")

    print("ZeRO-3 student, bytes held per rank after one step (parameters + fp32 master + Adam states)")
    for ranks_count in DEGREES:
        ranks = run("zero3", ranks_count, {})
        worst = max(ranks, key=lambda r: r["total"])
        results["zero3"][str(ranks_count)] = worst
        print(f"  {ranks_count} rank(s): {worst['total'] / 1e6:7.3f} MB (parameters {worst['parameters'] / 1e6:.3f}, "
              f"master {worst['fp32_master'] / 1e6:.3f}, Adam {worst['optimizer_states'] / 1e6:.3f}), ratio to 1 rank "
              f"{worst['total'] / results['zero3']['1']['total']:.3f} (1/n = {1 / ranks_count:.3f})")

    config = load_config("wan1.3b", ["train.global_batch_size=64", "train.precision=bf16",
                                     "parallel.teacher_shard_degree=8"])
    table = projection_table(config, args.world_size, [1, 2, 4, 8, 16])
    print(f"\nWan2.1-1.3B at {args.world_size} GPUs (estimate; teacher sharded over 8, bf16, micro-batch 1)")
    print(table)
    full_frames = round(FULL_HISTORY_SECONDS * config.video.latent_fps)
    full = dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, teacher_num_frames=full_frames))
    full_table = projection_table(full, args.world_size, [4, 8, 16])
    print(f"\nthe same with the teacher on the full 2-minute history ({full_frames} latent frames, "
          f"{full_frames * config.frame_seq_len:,} tokens)")
    print(full_table)
    results["projection"] = {"world_size": args.world_size, "table": table, "full_history_table": full_table}

    write_report(out_dir, "bench_parallel", results, lambda path: plot(results, path), note="\n")


if __name__ == "__main__":
    main()
