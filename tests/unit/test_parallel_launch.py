"""Launcher variables: torchrun / deepspeed names first, srun's SLURM_* names otherwise."""

from __future__ import annotations

import pytest

from ctxf.parallel.launch import launch_info, resolve_backend


def test_launch_info_reads_torchrun_and_slurm_variables():
    torchrun = launch_info({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node0",
                            "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.master_addr,
            torchrun.master_port) == (3, 8, 1, "node0", 1234)
    slurm = launch_info({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank) == (5, 16, 5)
    assert launch_info({}).world_size == 1


def test_backend_names():
    assert resolve_backend("gloo") == "gloo"
    with pytest.raises(ValueError, match="choose auto, nccl or gloo"):
        resolve_backend("mpi")
