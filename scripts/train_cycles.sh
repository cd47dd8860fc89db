#!/usr/bin/env bash
# Launch a symbol-discovery training run (all cycles in one fit).
#
#   GPUS=4 CONFIG=configs/salmonn_13b.yaml RUN_DIR=runs/13b-sentiment scripts/train_cycles.sh [--key value ...]
#   RESUME=1 RUN_DIR=runs/13b-sentiment scripts/train_cycles.sh          # continue from RUN_DIR/checkpoints/last.ckpt
#   OVERWRITE=1 ... scripts/train_cycles.sh                              # start the run in RUN_DIR again
#   SLURM=1 NODES=2 GPUS_PER_NODE=8 PARTITION=gpu TIME=24:00:00 scripts/train_cycles.sh   # submit with sbatch
#   DRY_RUN=1 ... scripts/train_cycles.sh                                # print the command instead of running it
#
# One machine: Lightning's own launcher starts one process per GPU (GPUS=N). On SLURM the script submits
# itself with sbatch; inside the allocation srun starts one task per GPU and Lightning reads the SLURM
# environment. SIGUSR1 arrives SIGNAL_LEAD seconds (default 300) before the end of TIME: the run finishes the
# step or the epoch end (validation, discovery) in progress, writes last.ckpt, requeues the job and exits; the
# requeued job resumes from last.ckpt. `kill -TERM` stops a run the same way, without the requeue.
# RESUME=1 uses RUN_DIR/config.yaml, the run's own resolved config, unless CONFIG is given; otherwise CONFIG is
# required. GPUS (or GPUS_PER_NODE) and NODES are whole numbers of at least 1.
# Extra arguments go to `salmonn-symbols fit` unchanged.
set -euo pipefail

die() { echo "train_cycles.sh: $*" >&2; exit 1; }
whole() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1=$2: expected a whole number of at least 1"; }

if [ "${RESUME:-0}" = 1 ]; then
    [ -n "${RUN_DIR:-}" ] || die "RESUME=1 needs RUN_DIR, the folder of the run to continue"
    LAST="$RUN_DIR/checkpoints/last.ckpt"
    [ -f "$LAST" ] || { echo "RESUME=1 but $LAST does not exist: nothing to resume" >&2; exit 1; }
    CONFIG=${CONFIG:-$RUN_DIR/config.yaml}
fi
[ -n "${CONFIG:-}" ] || die "CONFIG is not set: name a training config (CONFIG=configs/tiny.yaml for a CPU try-out,
    CONFIG=configs/salmonn_13b.yaml on GPUs), or continue a run with RESUME=1 RUN_DIR=<its folder>"
[ -f "$CONFIG" ] || die "CONFIG=$CONFIG: no such file (relative paths start at $(pwd))"
[ -r "$CONFIG" ] || die "CONFIG=$CONFIG: the file is not readable"
RUN_DIR=${RUN_DIR:-runs/$(basename "${CONFIG%.yaml}")}
GPUS=${GPUS:-${GPUS_PER_NODE:-1}}
NODES=${NODES:-1}
whole GPUS "$GPUS"
whole NODES "$NODES"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
LAST="$RUN_DIR/checkpoints/last.ckpt"

args=(fit --config "$CONFIG" --run_dir "$RUN_DIR")
if [ "${RESUME:-0}" = 1 ]; then
    args+=(--ckpt_path last)
elif [ "${SLURM_RESTART_COUNT:-0}" != 0 ]; then
    # a requeued job: continue from the checkpoint, or start again if it was stopped before the first one
    if [ -f "$LAST" ]; then args+=(--ckpt_path last); else args+=(--overwrite true); fi
elif [ "${OVERWRITE:-0}" = 1 ]; then
    args+=(--overwrite true)
fi

run() {
    if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; exit 0; fi
    exec "$@"
}

if [ "${SLURM:-0}" = 1 ] && [ -z "${SLURM_JOB_ID:-}" ]; then
    mkdir -p "$RUN_DIR"
    run sbatch --nodes="$NODES" --ntasks-per-node="$GPUS" --gpus-per-node="$GPUS" \
        --partition="${PARTITION:?set PARTITION}" --time="${TIME:-24:00:00}" \
        --signal=SIGUSR1@"${SIGNAL_LEAD:-300}" --requeue --job-name="salmonn-symbols" \
        --output="$RUN_DIR/slurm-%j.out" \
        --export=ALL,CONFIG="$CONFIG",RUN_DIR="$RUN_DIR",GPUS="$GPUS",NODES="$NODES" "$0" "$@"
fi

if [ -n "${SLURM_JOB_ID:-}" ]; then
    run srun "$PY" -m salmonn_symbols "${args[@]}" --trainer.num_nodes "$NODES" --trainer.devices "$GPUS" \
        --trainer.strategy ddp "$@"
fi

if [ "$GPUS" -gt 1 ] || [ "$NODES" -gt 1 ]; then
    args+=(--trainer.devices "$GPUS" --trainer.num_nodes "$NODES" --trainer.strategy ddp)
fi
run "$PY" -m salmonn_symbols "${args[@]}" "$@"
