"""Peak memory of ZeRO-3 consolidation: `ctxf-convert zero-to-safetensors` against DeepSpeed's own.

On one checkpoint written by a 2-rank ZeRO-3 training run (trained here for one step unless
`--checkpoint` names a step directory), each converter runs in its own fresh process and its peak
resident set size (ru_maxrss from wait4, file-backed mapped pages included) is recorded:
- `ctxf-convert zero-to-safetensors` (positioned reads, tensors streamed into the file);
- DeepSpeed's `zero_to_fp32.py --safe_serialization`, the script every DeepSpeed checkpoint
  carries (lazy mmap mode, one 5 GB shard materialized before saving);
- DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` followed by safetensors' `save_file`
  (the in-memory API most training code calls).
A process that only imports torch and DeepSpeed is the baseline; "added" is peak minus baseline,
reported in units of the fp32 model's size. The outputs are checked equal tensor for tensor.
Prints the ratios, writes JSON and a PNG under `--out`.

    python benchmarks/bench_convert.py [--out outputs/bench] [--checkpoint STEP_DIR] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks directory is not a package
from bench_report import pyplot, write_report  # noqa: E402
from ctxf.ckpt.zero_consolidate import ZeroCheckpoint

REPO = Path(__file__).resolve().parents[1]
# 8 blocks, width 768, ffn 3072: 80M parameters, 0.31 GB in fp32 (1.2 GB of ZeRO files with Adam)
MODEL = ["model.num_heads=12", "model.head_dim=64", "model.num_layers=8", "model.ffn_dim=3072"]
BASELINE = "import torch, deepspeed, safetensors.torch, ctxf.ckpt.convert"
DEEPSPEED_API = """
import contextlib, io, sys
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import save_file
with contextlib.redirect_stdout(io.StringIO()):
    state = get_fp32_state_dict_from_zero_checkpoint(sys.argv[1], tag="zero")
save_file({k: v.contiguous() for k, v in state.items()}, sys.argv[2])
"""


def train_checkpoint(run_dir: Path) -> Path:
    """One optimizer step of the benchmark model on 2 CPU ranks; returns its step directory."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "ctxf/train.py",
               "--deepspeed", "ds_configs/zero3.json", f"train.output_dir={run_dir}", "train.num_steps=1",
               "train.checkpoint_every=1", "train.sample_every=0", *MODEL]
    print("training the benchmark checkpoint:", " ".join(command[3:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stdout=subprocess.DEVNULL)
    return run_dir / "checkpoints" / "step_00000001"


def peak_rss_mb(command: list[str]) -> float:
    """Peak resident set size (MB) of `command`, run in a fresh process."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-2000:]}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def _outputs_equal(ours: Path, theirs: list[Path]) -> bool:
    import torch
    from safetensors.torch import load_file

    mine = load_file(ours)
    for path in theirs:
        other = {}
        for file in ([path] if path.is_file() else sorted(path.glob("*.safetensors"))):
            other.update(load_file(file))
        if sorted(other) != sorted(mine) or not all(torch.equal(mine[k], other[k]) for k in mine):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("--checkpoint", default=None, help="a training step directory (default: train one)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each converter; the lowest peak is kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ctxf-bench-convert-") as tmp:
        tmp = Path(tmp)
        step = Path(args.checkpoint) if args.checkpoint else train_checkpoint(tmp / "run")
        role_dir = step / "teacher"
        fp32_mb = sum(spec.nbytes for spec in ZeroCheckpoint(role_dir / "zero").specs()) / 2**20
        converters = {
            "ctxf-convert zero-to-safetensors": lambda out: [sys.executable, "-m", "ctxf.ckpt", "zero-to-safetensors",
                                                              str(step), str(out / "ours.safetensors")],
            "DeepSpeed zero_to_fp32.py": lambda out: [sys.executable, str(role_dir / "zero_to_fp32.py"), str(role_dir),
                                                     str(out / "deepspeed_script"), "--safe_serialization"],
            "DeepSpeed get_fp32_state_dict + save_file": lambda out: [sys.executable, "-c", DEEPSPEED_API,
                                                                     str(role_dir), str(out / "deepspeed_api.safetensors")],
        }
        baseline = min(peak_rss_mb([sys.executable, "-c", BASELINE]) for _ in range(args.repeats))
        peaks = {}
        for name, command in converters.items():
            runs = []
            for repeat in range(args.repeats):
                out = tmp / f"out{repeat}"
                out.mkdir(exist_ok=True)
                runs.append(peak_rss_mb(command(out)))
            peaks[name] = min(runs)
        out = tmp / "out0"
        equal = _outputs_equal(out / "ours.safetensors", [out / "deepspeed_script", out / "deepspeed_api.safetensors"])

    report = {"fp32_model_mb": fp32_mb, "baseline_mb": baseline, "outputs_equal": equal,
              "converters": {name: {"peak_mb": peak, "added_mb": peak - baseline,
                                    "added_over_fp32_model": (peak - baseline) / fp32_mb}
                             for name, peak in peaks.items()}}
    print(f"fp32 model {fp32_mb:.0f} MB; baseline process (torch + deepspeed imported) {baseline:.0f} MB; "
          f"outputs equal tensor for tensor: {equal}")
    for name, row in report["converters"].items():
        print(f"  {name:44s} peak {row['peak_mb']:7.0f} MB  added {row['added_mb']:7.0f} MB  "
              f"x{row['added_over_fp32_model']:.2f} of the fp32 model")

    def plot(path: Path) -> None:
        plt = pyplot()
        names = list(report["converters"])
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.barh(names, [report["converters"][n]["added_mb"] for n in names], color=["tab:green", "tab:red", "tab:red"])
        ax.axvline(fp32_mb, color="black", linestyle="--", label=f"fp32 model ({fp32_mb:.0f} MB)")
        ax.set_xlabel("peak resident memory above a process importing torch + deepspeed (MB)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path)

    write_report(args.out, "bench_convert", report, plot)


if __name__ == "__main__":
    main()
