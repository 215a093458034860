"""slurm/train.sh against a real SLURM on this machine (tests/slurm/local_cluster.py): sbatch trains
the tiny default on 2 CPU tasks; `scancel --signal=USR1` checkpoints, requeues and resumes the job;
slurm/train_64gpu.sh is accepted by a configuration of 8 nodes x 8 GPUs."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ctxf.config import load_config
from ctxf.models.wan import WanDiT

REPO = Path(__file__).resolve().parents[2]
NUM_STEPS = 30  # long enough for the signal to arrive mid-run on a fast machine
# The same run for both jobs; only the signal differs. Checkpoints: the last step and a stop only.
OVERRIDES = f"train.num_steps={NUM_STEPS} train.log_every=1 train.checkpoint_every=1000 train.sample_every=0"
JOB_TIMEOUT = 900  # seconds; a loaded 2-core machine needs minutes to start DeepSpeed twice
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}


@dataclass
class Job:
    job_id: str
    log: Path
    run_dir: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log yet)"

    def metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def submit(cluster, tmp_path: Path, name: str, wait: bool) -> Job:
    run_dir = tmp_path / name
    env = {"CTXF_CPU": "1", "CTXF_OUTPUT_DIR": str(run_dir), "CTXF_OVERRIDES": OVERRIDES,
           "TORCH_EXTENSIONS_DIR": str(REPO / ".torch_extensions"), "OMP_NUM_THREADS": "1"}
    if (Path(sys.prefix) / "bin" / "activate").exists():
        env["CTXF_VENV"] = sys.prefix
    env.update({k: "" for k in cluster.env if k.startswith("CTXF_") and k not in env})
    command = ["sbatch", "--parsable", "--ntasks=2", f"--job-name={name}", f"--output={tmp_path}/%x-%j.out"]
    result = cluster.run(*command, *(["--wait"] if wait else []), str(REPO / "slurm" / "train.sh"),
                         cwd=REPO, env=env, check=False, timeout=JOB_TIMEOUT)
    job_id = result.stdout.strip().split(";")[0]
    job = Job(job_id, tmp_path / f"{name}-{job_id}.out", run_dir)
    assert result.returncode == 0, f"sbatch exit {result.returncode}: {result.stderr}\n{job.text()}"
    return job


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, tmp_path_factory) -> Job:
    """The reference job: NUM_STEPS steps, nobody interrupts it (sbatch --wait)."""
    return submit(slurm_cluster, tmp_path_factory.mktemp("plain"), "ctxf-plain", wait=True)


@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_sbatch_trains_on_two_cpu_tasks_with_log_events_and_checkpoint(slurm_cluster, uninterrupted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job, log = uninterrupted, uninterrupted.text()
    assert slurm_cluster.job_field(job.job_id, "ExitCode") == "0:0", log
    assert f"ctxf job {job.job_id} (restart 0) on {slurm_cluster.host}: 2 tasks" in log, log
    assert "training stage teacher: 2 ranks" in log, log
    assert f"training complete at step {NUM_STEPS}" in log, log
    assert "requeueing" not in log

    events = EventAccumulator(str(job.run_dir / "tensorboard"))
    events.Reload()
    losses = events.Scalars("loss/flow")
    assert [event.step for event in losses] == list(range(1, NUM_STEPS + 1))
    assert all(0.0 < event.value < 10.0 for event in losses)

    checkpoints = job.run_dir / "checkpoints"
    last = f"step_{NUM_STEPS:08d}"
    assert (checkpoints / "latest").read_text().strip() == last
    manifest = json.loads((checkpoints / last / "manifest.json").read_text())
    assert manifest["step"] == NUM_STEPS and manifest["world_size"] == 2
    # DeepSpeed's own consolidation of the two ZeRO-3 partitions gives the whole tiny model back
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    weights = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints / last / "teacher"), tag="zero")
    model = WanDiT(load_config("tiny").model)
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(p.shape) for k, p in model.named_parameters()}
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert json.loads((job.run_dir / "run_status.json").read_text())["status"] == "complete"


@pytest.mark.timeout(2 * JOB_TIMEOUT + 60)
def test_usr1_checkpoints_requeues_and_resumes_from_that_step(slurm_cluster, uninterrupted, tmp_path):
    job = submit(slurm_cluster, tmp_path, "ctxf-usr1", wait=False)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not any(row["step"] >= 2 for row in job.metrics()):  # training runs, its handlers are installed
        state = slurm_cluster.job_field(job.job_id, "JobState")
        assert state not in FINAL_STATES and time.monotonic() < deadline, f"job {state} before step 2:\n{job.text()}"
        time.sleep(0.2)
    slurm_cluster.run("scancel", "--signal=USR1", job.job_id)
    state = slurm_cluster.wait_for_state(job.job_id, FINAL_STATES, timeout=JOB_TIMEOUT)
    log = job.text()
    assert state == "COMPLETED" and slurm_cluster.job_field(job.job_id, "ExitCode") == "0:0", f"{state}\n{log}"

    stopped = re.search(r"stop requested \(SIGUSR1\): saved step (\d+)", log)
    assert stopped, log
    step = int(stopped.group(1))
    assert 2 <= step < NUM_STEPS, f"the signal arrived after the last step ({step}): nothing left to resume\n{log}"
    step_dir = job.run_dir / "checkpoints" / f"step_{step:08d}"
    assert json.loads((step_dir / "manifest.json").read_text())["step"] == step  # the checkpoint it left
    assert f"ctxf job {job.job_id}: interrupted by SIGUSR1, checkpoint saved; requeueing" in log
    assert slurm_cluster.job_field(job.job_id, "Restarts") == "1"
    first, _, second = log.partition(f"ctxf job {job.job_id} (restart 1)")
    assert second, f"no requeued run in the log\n{log}"
    assert f"resumed from {step_dir} at step {step}" in second, log
    assert f"training complete at step {NUM_STEPS}" in second, log

    # The step counter: every step logged exactly once, the requeued run going on from step + 1
    steps = [row["step"] for row in job.metrics()]
    assert steps == list(range(1, NUM_STEPS + 1)), steps
    assert f"step {step + 1}/{NUM_STEPS}" in second and f"step {step + 1}/{NUM_STEPS}" not in first
    # Exact resume: after the requeue, the same losses as the run nobody interrupted
    reference = {row["step"]: row["loss/flow"] for row in uninterrupted.metrics()}
    resumed = {row["step"]: row["loss/flow"] for row in job.metrics()}
    assert resumed == pytest.approx(reference, rel=1e-6)


def test_64gpu_script_is_accepted_by_a_cluster_of_8_nodes_with_8_gpus(slurm_cluster):
    script = str(REPO / "slurm" / "train_64gpu.sh")
    accepted = slurm_cluster.run("sbatch", "--test-only", "--partition=gpu", script, check=False, cwd=REPO)
    assert accepted.returncode == 0, accepted.stderr
    assert re.search(r"to start at .* on nodes gpu\[1-8\] in partition gpu", accepted.stderr), accepted.stderr
    # the same check refuses a partition without those GPUs (the CPU node the other tests run on)
    refused = slurm_cluster.run("sbatch", "--test-only", "--partition=debug", script, check=False, cwd=REPO)
    assert refused.returncode != 0 and "Requested node configuration is not available" in refused.stderr
