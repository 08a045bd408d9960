#!/usr/bin/env bash
# Train with an experiment file, one process per GPU under torchrun (as python -m engine.launch).
#
#   bash scripts/train.sh CONFIG [GPUS] [more train.py flags]
#   bash scripts/train.sh configs/pointflow/isaid_r50.yaml                 # 8 GPUs, the paper's setting
#   bash scripts/train.sh configs/pointflow/isaid_r50.yaml 1 --bs_mult 2   # one GPU (global batch 2)
#   NNODES=2 RDZV_ENDPOINT=node0:29500 bash scripts/train.sh configs/pointflow/isaid_r50.yaml 4   # on every node
#
# GPUS: processes per node (default 8). Environment: NNODES (default 1), RDZV_ENDPOINT (host:port of the first
# node, with NNODES > 1), PYTHON (default python). Flags after GPUS override the file (train.py --config).
set -euo pipefail
if [ "$#" -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: bash $0 CONFIG [GPUS] [more train.py flags]: CONFIG is a YAML experiment file," \
       "e.g. configs/pointflow/isaid_r50.yaml" >&2
  exit 2
fi
CONFIG=$1
shift
GPUS=8
if [ "$#" -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  GPUS=$1
  shift
fi
NNODES=${NNODES:-1}
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ "${NNODES}" -gt 1 ] && [ -z "${RDZV_ENDPOINT:-}" ]; then
  echo "$0: NNODES=${NNODES}: set RDZV_ENDPOINT=host:port of the first node" >&2
  exit 2
fi
if [ "${NNODES}" -gt 1 ]; then
  LAUNCH=(--nnodes="${NNODES}" --rdzv_backend=c10d --rdzv_id=pfnet --rdzv_endpoint="${RDZV_ENDPOINT}")
else
  LAUNCH=(--standalone)
fi
PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}" exec "${PYTHON:-python}" -m engine.launch "${LAUNCH[@]}" \
  --nproc_per_node="${GPUS}" "${REPO}/train.py" --config "${CONFIG}" "$@"
