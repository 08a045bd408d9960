#!/usr/bin/env bash
# The paper's ablation: UperNet-R50 against PFNet-R50, both trained with the iSAID recipe
# configs/pointflow/isaid_r50.yaml and evaluated with the protocol of test/test_iSAID_pfnet_R50.sh, one table
# (mIoU, per-class IoU, parameters, GFLOPs, images/s). UperNet has no edge maps: train.py trains it on the
# segmentation loss alone (OHEM) and says so.
#
#   bash scripts/pointflow/ablation_upernet_vs_pfnet_r50.sh [more train.py flags]
#   GPUS=4 DATA=/data/iSAID bash scripts/pointflow/ablation_upernet_vs_pfnet_r50.sh
#
# Environment: GPUS (training processes, default 8), DATA (prepared iSAID root, default the config's
# DATASET.ISAID_DIR), EXP_DIR (default ./ablation_iSAID), PYTHON (default python).
# The table is printed and written to EXP_DIR/ablation.md and EXP_DIR/ablation.json.
set -euo pipefail
GPUS=${GPUS:-8}
EXP_DIR=${EXP_DIR:-./ablation_iSAID}
PYTHON=${PYTHON:-python}
DATA_FLAGS=()
if [ -n "${DATA:-}" ]; then
  DATA_FLAGS=(--data "${DATA}")
fi
"${PYTHON}" "$(dirname "$0")/../ablation_upernet_vs_pfnet.py" --out "${EXP_DIR}" --gpus "${GPUS}" \
  ${DATA_FLAGS[@]+"${DATA_FLAGS[@]}"} \
  -- "$@"
