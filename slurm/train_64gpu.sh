#!/usr/bin/env bash
# ctxf training on 64 GPUs: 8 nodes x 8 GPUs, one srun task per GPU. The directives and NCCL
# settings live here; slurm/train.sh does the work (rendezvous, environment, srun, requeue).
#
#   sbatch slurm/train_64gpu.sh train.init_checkpoint=/ckpt/Wan2.1-T2V-1.3B-Diffusers/transformer
#   CTXF_CONFIG=wan14b CTXF_OUTPUT_DIR=/scratch/ctxf/wan14b sbatch -p <partition> slurm/train_64gpu.sh
#   CTXF_DRY_RUN=1 bash slurm/train_64gpu.sh        # the 64-rank plan and memory estimate, no allocation
#
# Submit from the repository root (or set CTXF_REPO). CTXF_CONFIG picks the preset (default
# wan1.3b; wan14b also fits 80 GB GPUs); every CTXF_* variable of slurm/train.sh applies, and
# arguments after the script go to ctxf/train.py. The log is <job name>-<job id>.out in the submit
# directory; a requeued run appends to it. USR1 arrives 10 minutes before the time limit: enough
# to finish a step and write a sharded checkpoint; raise it if your steps or file system are slower.
#
#SBATCH --job-name=ctxf-64gpu
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

set -euo pipefail

# NCCL and torch.distributed settings worth knowing (the defaults below are what we run with;
# export your own value before sbatch to change one):
# - NCCL_DEBUG=WARN prints only problems; INFO shows the chosen transports (IB / NVLink / socket),
#   rings and trees per rank, the first thing to read when bandwidth is low or init hangs.
# - TORCH_NCCL_ASYNC_ERROR_HANDLING=1: a collective that fails or exceeds the process-group
#   timeout (10 min) tears the process down instead of hanging until the time limit; srun
#   --kill-on-bad-exit then ends every rank.
# - NCCL_SOCKET_IFNAME: the interface NCCL's bootstrap and socket transport use (e.g. ib0,
#   eth0, ^docker,lo); set it when nodes have several and NCCL picks one the others cannot reach.
# - NCCL_IB_HCA: which InfiniBand adapters to use (e.g. mlx5); unset lets NCCL take all of them.
# - NCCL_NVLS_ENABLE=0 / NCCL_P2P_DISABLE=1: switches for debugging NVLink SHARP and peer-to-peer
#   problems inside a node; never needed on a healthy node.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}

export CTXF_CONFIG=${CTXF_CONFIG:-wan1.3b}
export CTXF_WORLD_SIZE=${CTXF_WORLD_SIZE:-64}  # nodes x ntasks-per-node, for CTXF_DRY_RUN outside a job
repo=${CTXF_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
exec bash "$repo/slurm/train.sh" "$@"
