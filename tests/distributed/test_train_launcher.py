"""`ctxf/train.py` as users launch it, in real processes: the main job under the deepspeed launcher
(TensorBoard's own reader reads its scalars and sample back, ctxf-generate streams from its
checkpoint), exact resume after SIGKILL, and SIGUSR1 to one rank under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gloo_workers import REPO, TORCH_EXTENSIONS_DIR, free_port, prebuild_deepspeed_ops

from ctxf.ckpt.training_checkpoint import LATEST, verify_step

BIN = Path(sys.executable).parent
DS_CONFIG = str(REPO / "ds_configs" / "zero3.json")


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    """One XDG cache for the module: the first run generates the built-in curtain shards into it."""
    prebuild_deepspeed_ops()
    return tmp_path_factory.mktemp("xdg-cache")


def _env(cache_home: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(TORCH_EXTENSIONS_DIR),
            "XDG_CACHE_HOME": str(cache_home), "PYTHONUNBUFFERED": "1"}


def _deepspeed(run_dir: Path, *overrides: str) -> list[str]:
    return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
            str(REPO / "ctxf" / "train.py"), "--deepspeed", DS_CONFIG, "--output-dir", str(run_dir), *overrides]


def _torchrun(run_dir: Path, *overrides: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
            str(REPO / "ctxf" / "train.py"), "--output-dir", str(run_dir), *overrides]


def _run(command: list[str], cache_home: Path, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=_env(cache_home), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _losses(run_dir: Path) -> dict[int, float]:
    """The last logged loss of every step (a resumed run logs the steps after its checkpoint again)."""
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss/flow"]
    return losses


def _wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"training exited early ({process.returncode})"
        assert time.monotonic() < deadline, "timed out waiting for the training run"
        time.sleep(0.1)


def _rank_pid(run_dir: Path, rank: int) -> int:
    """The pid of the training process with RANK=`rank` whose command line names `run_dir`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(run_dir).encode() in cmdline and b"--nproc_per_node" not in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no rank {rank} process for {run_dir}")


def test_main_job_logs_checkpoints_and_generates(tmp_path, cache_home):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    done = _run(_deepspeed(run_dir, "train.num_steps=6", "train.sample_every=3", "train.log_every=1"),
                cache_home, tmp_path)
    assert "training complete at step 6" in done.stdout
    assert list(cache_home.glob("ctxf/curtain-*/train/*.tar")), "the built-in shards were not generated"
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("loss/flow", "grad_norm", "lr", "samples_per_s", "memory/peak_mb", "data/skipped", "time/data",
                "time/forward", "time/backward", "time/optimizer", "time/checkpoint"):
        assert tag in scalars, tag
    assert [event.step for event in events.Scalars("loss/flow")] == [1, 2, 3, 4, 5, 6]
    assert _losses(run_dir) == pytest.approx({e.step: e.value for e in events.Scalars("loss/flow")}, rel=1e-6)
    assert [image.step for image in events.Images("sample/frames")] == [3, 6]
    assert (run_dir / "checkpoints" / LATEST).read_text().strip() == "step_00000006"
    verify_step(run_dir / "checkpoints" / "step_00000006")

    generated = subprocess.run([str(BIN / "ctxf-generate"), "--checkpoint", str(run_dir), "--seconds", "3",
                                "--output-dir", str(tmp_path / "video")], env=_env(cache_home),
                               capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr
    assert list((tmp_path / "video").glob("*.mp4"))


def test_sigkill_then_resume_auto_repeats_the_uninterrupted_losses(tmp_path, cache_home):
    overrides = ["train.num_steps=8", "train.checkpoint_every=3", "train.log_every=1", "data.num_workers=2"]
    _run(_deepspeed(tmp_path / "straight", *overrides), cache_home, tmp_path)
    expected = _losses(tmp_path / "straight")

    run_dir = tmp_path / "killed"
    process = subprocess.Popen(_deepspeed(run_dir, *overrides), cwd=tmp_path, env=_env(cache_home),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for((run_dir / "checkpoints" / LATEST).exists, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed_at = max(_losses(run_dir))
    assert killed_at < 8, "the run finished before it could be killed"

    resumed = _run(_deepspeed(run_dir, *overrides), cache_home, tmp_path)
    assert "resumed from" in resumed.stdout
    assert _losses(run_dir) == expected  # exactly: the same fp32 arithmetic, data and randomness


def test_sigusr1_on_one_rank_checkpoints_that_step_and_resumes(tmp_path, cache_home):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(_torchrun(run_dir, "train.num_steps=500", "train.log_every=1"), cwd=tmp_path,
                               env=_env(cache_home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        _wait_for(lambda: (run_dir / "metrics.jsonl").exists() and _losses(run_dir), process)
        os.kill(_rank_pid(run_dir, 1), signal.SIGUSR1)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output[-3000:]
    status = json.loads((run_dir / "run_status.json").read_text())
    assert status["status"] == "interrupted" and 0 < status["step"] < 500
    step_name = f"step_{status['step']:08d}"
    assert (run_dir / "checkpoints" / LATEST).read_text().strip() == step_name
    verify_step(run_dir / "checkpoints" / step_name)
    assert "stop requested" in output

    resumed = _run(_torchrun(run_dir, f"train.num_steps={status['step'] + 2}", "train.log_every=1"), cache_home,
                   tmp_path)
    assert f"resumed from {run_dir / 'checkpoints' / step_name} at step {status['step']} (" in resumed.stdout
    assert max(_losses(run_dir)) == status["step"] + 2
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "complete"
