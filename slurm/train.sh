#!/usr/bin/env bash
# ctxf training under SLURM, for any number of nodes and GPUs: one srun task per GPU.
#
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=8 slurm/train.sh
#   CTXF_CONFIG=wan1.3b CTXF_OUTPUT_DIR=/scratch/ctxf/run1 sbatch ... slurm/train.sh train.num_steps=3000
#   CTXF_CPU=1 sbatch --ntasks=2 slurm/train.sh          # CPU ranks over gloo (what the tests run)
#
# Submit from the repository root (or set CTXF_REPO). Arguments after the script go to
# ctxf/train.py (`section.key=value` overrides, or options such as --resume).
#
# Why srun, one task per GPU, and not the deepspeed launcher fed a hostfile: srun starts every rank
# on every node itself (no ssh/pdsh between nodes), gives each task SLURM_PROCID / SLURM_NTASKS /
# SLURM_LOCALID (read by ctxf.parallel.launch), delivers --signal / scancel --signal to every rank,
# and ends the whole step when one rank dies (--kill-on-bad-exit).
#
# Preemption and time limits: with `--signal=USR1@<seconds>` every rank gets SIGUSR1 that long
# before the end (or now, with `scancel --signal=USR1 <job>`); the trainer finishes its step, saves a
# checkpoint, writes run_status.json ("interrupted") and exits 0. This script then requeues the job
# (`scontrol requeue`, needs --requeue), and the requeued run resumes from the newest complete
# checkpoint in the same output directory (--resume auto). SIGTERM (scancel, or Slurm's own
# preemption) also checkpoints, but is not requeued here: whoever sent it decides.
#
# Variables (all optional):
#   CTXF_CONFIG      preset name or YAML path                        (default: tiny)
#   CTXF_STAGE       train.stage                                      (default: the config's)
#   CTXF_OUTPUT_DIR  run directory: checkpoints, TensorBoard, logs    (default: outputs/slurm/<config>)
#   CTXF_DS_CONFIG   DeepSpeed JSON                                   (default: ds_configs/zero3.json)
#   CTXF_OVERRIDES   extra `section.key=value` overrides, space separated
#   CTXF_REPO        repository root                                  (default: the submit directory)
#   CTXF_VENV        virtual environment to activate                  (default: $CTXF_REPO/.venv)
#   CTXF_CPU=1       CPU ranks over gloo, OMP_NUM_THREADS=1 (no GPU needed)
#   CTXF_MASTER_PORT rendezvous port                                  (default: 20000 + job id % 20000)
#   CTXF_DRY_RUN=1   print the plan of this job (ctxf/train.py --validate-only for SLURM_NTASKS, else
#                    CTXF_WORLD_SIZE ranks) instead of training; needs no allocation
#
#SBATCH --job-name=ctxf
#SBATCH --requeue
#SBATCH --signal=USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

set -euo pipefail

dry_run=${CTXF_DRY_RUN:-0}
if [[ $dry_run != 1 && -z ${SLURM_JOB_ID:-} ]]; then
    echo "error: no SLURM job: submit with sbatch (or run inside salloc)" >&2
    exit 2
fi

repo=${CTXF_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
if [[ ! -f $repo/ctxf/train.py ]]; then
    echo "error: $repo is not a ctxf checkout: submit from the repository root or set CTXF_REPO" >&2
    exit 2
fi
cd "$repo"
venv=${CTXF_VENV:-$repo/.venv}
if [[ ! -f $venv/bin/activate ]]; then
    echo "error: no virtual environment at $venv: run 'make setup' in $repo first, or set CTXF_VENV" >&2
    exit 2
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"

config=${CTXF_CONFIG:-tiny}
config_name=$(basename "$config" .yaml)
output_dir=${CTXF_OUTPUT_DIR:-outputs/slurm/$config_name}
ds_config=${CTXF_DS_CONFIG:-ds_configs/zero3.json}

overrides=()
if [[ ${CTXF_CPU:-0} == 1 ]]; then
    # one intra-op thread per rank, as `make train` runs (ranks fighting over cores run many times slower)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=cpu
    overrides+=(parallel.backend=gloo)
fi
if [[ -n ${CTXF_STAGE:-} ]]; then
    overrides+=("train.stage=$CTXF_STAGE")
fi
read -r -a extra <<<"${CTXF_OVERRIDES:-}"
overrides+=("${extra[@]}")

if [[ $dry_run == 1 ]]; then
    world_size=${SLURM_NTASKS:-${CTXF_WORLD_SIZE:-}}
    if [[ -z $world_size ]]; then
        echo "error: CTXF_DRY_RUN=1 needs the number of ranks: set SLURM_NTASKS or CTXF_WORLD_SIZE" >&2
        exit 2
    fi
    exec python ctxf/train.py --validate-only --world-size "$world_size" --config "$config" \
        --deepspeed "$ds_config" --output-dir "$output_dir" "${overrides[@]}" "$@"
fi

# Rendezvous from the allocation: rank 0 runs on the first host of the node list; the port is a
# function of the job id, so two jobs sharing a node do not collide and a requeued job reuses it.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${CTXF_MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT

echo "ctxf job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST: $SLURM_NTASKS tasks," \
     "master $MASTER_ADDR:$MASTER_PORT, config $config, output $output_dir, started $(date -u +%FT%TZ)"

rc=0
export PYTHONUNBUFFERED=1
# Slurm 22.05+ srun does not inherit --cpus-per-task from sbatch: pass it on.
srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
    python ctxf/train.py --config "$config" --deepspeed "$ds_config" --output-dir "$output_dir" --resume auto \
    "${overrides[@]}" "$@" || rc=$?

if [[ $rc -ne 0 ]]; then
    echo "ctxf job $SLURM_JOB_ID: training failed (srun exit $rc); not requeued" >&2
    exit "$rc"
fi
if [[ ! -f $output_dir/run_status.json ]]; then
    echo "error: ctxf job $SLURM_JOB_ID: training exited 0 without $output_dir/run_status.json" >&2
    exit 1
fi
read -r status signal < <(python - "$output_dir/run_status.json" <<'EOF'
import json
import sys

status = json.load(open(sys.argv[1]))
print(status["status"], status["signal"] or "-")
EOF
)
if [[ $status == interrupted && $signal != SIGTERM ]]; then
    echo "ctxf job $SLURM_JOB_ID: interrupted by $signal, checkpoint saved; requeueing to resume"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
echo "ctxf job $SLURM_JOB_ID: training $status, finished $(date -u +%FT%TZ)"
