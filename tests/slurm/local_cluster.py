"""A real, throw-away SLURM cluster on this machine: slurmctld and slurmd (Debian's `slurm-wlm`)
started in the foreground from a generated `slurm.conf` in a temporary directory.

- One CPU node, this host, in the default partition `debug`, where jobs really run.
- Eight nodes of 8 GPUs (`gpu[1-8]`, partition `gpu`) that have no slurmd: they only exist so that
  `sbatch --test-only` can check a 64-GPU job against a matching configuration.
- `AuthType=auth/none` and `CredType=cred/none`: the authentication Slurm 22.05 accepts without a
  munge key. Free ports are chosen, nothing is written to /etc, and the client commands get the
  config through `SLURM_CONF` in `env` (never through this process' own environment).

`stop()` cancels what is left, then terminates both daemons; the pytest fixture calls it on
success and on failure, and the daemons also get SIGTERM if the test process dies (PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "squeue")
GPU_NODES, GPUS_PER_NODE = 8, 8


def missing_commands() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if shutil.which(name) is None
            and not Path("/usr/sbin", name).exists()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Child side of Popen: SIGTERM this daemon if the process that started it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _daemon(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.host = socket.gethostname()
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for name in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if name != "SLURM_CONF":
                del self.env[name]  # a test run inside a job must not leak that job's settings
        self._processes: list[subprocess.Popen] = []

    # ------------------------------------------------------------------ config

    def write_config(self) -> Path:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        lines = [
            "ClusterName=ctxftest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/none",
            "CredType=cred/none",
            # a requeued job waits cred_expire + 1 s before it may start again (default 120 s)
            "AuthInfo=cred_expire=5",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/slurmctld.log",
            f"SlurmdLogFile={r}/slurmd.log",
            "ProctrackType=proctrack/pgid",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "GresTypes=gpu",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "ReturnToService=2",
            "SchedulerParameters=sched_interval=1",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1000 State=UNKNOWN",
            f"NodeName=gpu[1-{GPU_NODES}] NodeAddr=127.0.0.1 CPUs=64 RealMemory=1000000 "
            f"Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName=gpu Nodes=gpu[1-{GPU_NODES}] MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        return self.conf

    # ------------------------------------------------------------------ daemons

    def start(self, timeout: float = 60.0) -> None:
        self.write_config()
        for name, extra in (("slurmctld", ["-i"]), ("slurmd", ["-N", self.host])):
            self._processes.append(subprocess.Popen(
                [_daemon(name), "-D", "-f", str(self.conf), *extra], env=self.env,
                stdout=open(self.root / f"{name}.out", "w"), stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited ({process.returncode}):\n{self.daemon_logs()}")
            state = self.run("sinfo", "-h", "-n", self.host, "-o", "%t", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"node {self.host} not idle after {timeout:.0f} s:\n{self.daemon_logs()}")

    def stop(self) -> None:
        """Cancel every job left, then terminate the daemons this object started."""
        if self._processes and self._processes[0].poll() is None:
            self.run("scancel", "--full", "--signal=KILL", "-u", "root", check=False, timeout=20)
            self.run("scancel", "-u", "root", check=False, timeout=20)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.run("squeue", "-h", check=False, timeout=20).stdout.strip():
                time.sleep(0.5)
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self._processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()

    def daemon_logs(self, tail: int = 40) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            path = self.root / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                out.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(out)

    # ------------------------------------------------------------------ clients

    def run(self, *command: str, check: bool = True, timeout: float = 60.0, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(list(command), env={**self.env, **(env or {})}, cwd=cwd, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def job_field(self, job_id: str, name: str) -> str:
        """One field of `scontrol show job` (empty once the job has left slurmctld's memory)."""
        shown = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        for item in shown.split():
            key, _, value = item.partition("=")
            if key == name:
                return value
        return ""

    def wait_for_state(self, job_id: str, states: set[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.job_field(job_id, "JobState")
            if state in states:
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {state or 'unknown'} after {timeout:.0f} s "
                           f"(waiting for {', '.join(sorted(states))})\n{self.daemon_logs()}")
