#!/usr/bin/env bash
# PFNet-R50 on LoveDA (Urban + Rural, whole 1024x1024 images prepared by tools/prepare_dataset.py loveda).
# Not a recipe of the original repository: PFNet's Potsdam/Vaihingen recipe (SGD, poly LR stepped per epoch,
# OHEM + joint edge loss weight 25, float32, SyncBN) with the LoveDA paper's baseline crops: random scale
# 0.5-2.0 then 512x512 crops, flips and 90-degree rotations, a global batch of 16 (8 GPUs x 2). 100 epochs of
# the 2522 training images are ~15.8k iterations, about the 15k of the LoveDA baselines.
# For the paper's other setting, whole 1024 x 1024 crops, add --crop_size 1024 (BS_MULT stays >= 2: the PSP
# module's 1x1 bin is batch-normalised per process; about 4x the GPU memory per patch).
#
#   bash scripts/pointflow/train_loveda_pfnet_r50.sh [more train.py flags]
#   GPUS=4 bash scripts/pointflow/train_loveda_pfnet_r50.sh                       # fewer GPUs on this machine
#   NNODES=2 RDZV_ENDPOINT=node0:29500 bash scripts/pointflow/train_loveda_pfnet_r50.sh   # run on every node
#
# Environment: GPUS (processes per node, default 8), NNODES (default 1), RDZV_ENDPOINT (host:port of the
# first node, with NNODES > 1), BS_MULT (patches per GPU, default 2: the global batch is NNODES*GPUS*BS_MULT;
# the LR is not rescaled), EXP_DIR (default ./loveda), PYTHON (default python).
# The dataset root is cfg DATASET.LOVEDA_DIR (default ./data/LoveDA; --set DATASET.LOVEDA_DIR=DIR).
set -euo pipefail
GPUS=${GPUS:-8}
NNODES=${NNODES:-1}
BS_MULT=${BS_MULT:-2}
EXP_DIR=${EXP_DIR:-./loveda}
PYTHON=${PYTHON:-python}
if [ "${NNODES}" -gt 1 ]; then
  LAUNCH=(--nnodes="${NNODES}" --rdzv_backend=c10d --rdzv_id=pfnet
          --rdzv_endpoint="${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of the first node}")
else
  LAUNCH=(--standalone)
fi
now=$(date +"%Y%m%d_%H%M%S")
mkdir -p "${EXP_DIR}"
"${PYTHON}" -m engine.launch "${LAUNCH[@]}" --nproc_per_node="${GPUS}" train.py \
  --dataset LoveDA \
  --arch pfnet_r50 \
  --pretrained ./pretrained_models/resnet50-deep.pth \
  --lr 0.01 \
  --lr_schedule poly \
  --poly_exp 0.9 \
  --max_epoch 100 \
  --syncbn \
  --sgd \
  --maxpool_size 14 \
  --avgpool_size 9 \
  --edge_points 128 \
  --match_dim 64 \
  --joint_edge_loss_pfnet \
  --edge_weight 25.0 \
  --ohem \
  --crop_size 512 \
  --scale_min 0.5 \
  --scale_max 2.0 \
  --with_aug \
  --bs_mult "${BS_MULT}" \
  --exp r50 \
  --ckpt "${EXP_DIR}" \
  --tb_path "${EXP_DIR}" \
  "$@" 2>&1 | tee "${EXP_DIR}/log_${now}.txt"
