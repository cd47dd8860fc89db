#!/usr/bin/env bash
# Launch a symbol-discovery training run (all cycles in one fit).
#
#   GPUS=4 CONFIG=configs/salmonn_13b.yaml RUN_DIR=runs/13b-sentiment scripts/train_cycles.sh [--key value ...]
#   RESUME=1 RUN_DIR=runs/13b-sentiment scripts/train_cycles.sh          # continue from RUN_DIR/checkpoints/last.ckpt
#   SLURM=1 NODES=2 GPUS_PER_NODE=8 PARTITION=gpu TIME=24:00:00 scripts/train_cycles.sh   # submit with sbatch
#
# One machine: Lightning's own launcher starts one process per GPU (GPUS=N). On SLURM the script submits
# itself with sbatch; inside the allocation srun starts one task per GPU, Lightning reads the SLURM environment,
# and a preempted job is requeued and resumes from last.ckpt (SIGUSR1 90 s before the end of TIME).
# Extra arguments go to `salmonn-symbols fit` unchanged.
set -euo pipefail

CONFIG=${CONFIG:-configs/tiny.yaml}
RUN_DIR=${RUN_DIR:-runs/$(basename "${CONFIG%.yaml}")}
GPUS=${GPUS:-${GPUS_PER_NODE:-1}}
NODES=${NODES:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3

args=(fit --config "$CONFIG" --run_dir "$RUN_DIR")
if [ "${RESUME:-0}" = 1 ] || [ -f "$RUN_DIR/checkpoints/last.ckpt" -a -n "${SLURM_RESTART_COUNT:-}" ]; then
    [ -f "$RUN_DIR/checkpoints/last.ckpt" ] || { echo "RESUME=1 but $RUN_DIR/checkpoints/last.ckpt does not exist" >&2; exit 1; }
    args+=(--ckpt_path last)
fi

if [ "${SLURM:-0}" = 1 ] && [ -z "${SLURM_JOB_ID:-}" ]; then
    mkdir -p "$RUN_DIR"
    exec sbatch --nodes="$NODES" --ntasks-per-node="$GPUS" --gpus-per-node="$GPUS" \
        --partition="${PARTITION:?set PARTITION}" --time="${TIME:-24:00:00}" \
        --signal=SIGUSR1@90 --requeue --job-name="salmonn-symbols" --output="$RUN_DIR/slurm-%j.out" \
        --export=ALL,CONFIG="$CONFIG",RUN_DIR="$RUN_DIR",GPUS="$GPUS",NODES="$NODES" "$0" "$@"
fi

if [ -n "${SLURM_JOB_ID:-}" ]; then
    # Lightning's SLURMEnvironment handles ranks and requeue; auto-requeue resumes from last.ckpt.
    [ -f "$RUN_DIR/checkpoints/last.ckpt" ] && [[ " ${args[*]} " != *" --ckpt_path "* ]] && args+=(--ckpt_path last)
    exec srun "$PY" -m salmonn_symbols "${args[@]}" --trainer.num_nodes "$NODES" --trainer.devices "$GPUS" \
        --trainer.strategy ddp "$@"
fi

if [ "$GPUS" -gt 1 ] || [ "$NODES" -gt 1 ]; then
    args+=(--trainer.devices "$GPUS" --trainer.num_nodes "$NODES" --trainer.strategy ddp)
fi
exec "$PY" -m salmonn_symbols "${args[@]}" "$@"
