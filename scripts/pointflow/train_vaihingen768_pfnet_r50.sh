#!/usr/bin/env bash
# PFNet-R50 on ISPRS Vaihingen (768x768, random scale 0.5-2 + crop, 200 epochs, lr 0.01).
# The original recipe as it actually ran: 8 GPUs x 2 patches per step, SyncBN, SGD, poly LR stepped per
# epoch, OHEM + PFNet's joint edge loss (weight 25), float32.
#
#   bash scripts/pointflow/train_vaihingen768_pfnet_r50.sh [more train.py flags]
#   GPUS=4 bash scripts/pointflow/train_vaihingen768_pfnet_r50.sh                       # fewer GPUs on this machine
#   NNODES=2 RDZV_ENDPOINT=node0:29500 bash scripts/pointflow/train_vaihingen768_pfnet_r50.sh   # run on every node
#
# Environment: GPUS (processes per node, default 8), NNODES (default 1), RDZV_ENDPOINT (host:port of the
# first node, with NNODES > 1), BS_MULT (patches per GPU, default 2: the global batch is NNODES*GPUS*BS_MULT;
# the LR is not rescaled), EXP_DIR (default ./vaihingen), PYTHON (default python).
# Differences from the original script, flag by flag:
#   torchrun (as engine.launch: one closing line instead of its traceback) replaces torch.distributed.launch;
#   --apex is dropped (torch DDP does its job; the original
#   trained in float32, as here: add --amp bf16 or fp16 for mixed precision);
#   --class_uniform_pct 0.5 --class_uniform_tile 1024 --max_cu_epoch 200 are dropped: the original's
#   datasets never built class-uniform epochs, so the published models saw plain shuffled patches;
#   --repoly 1.5 --rescale 1.0 are dropped: they only act in the scl-poly schedule, not in poly;
#   --aux and --wt_bound 1.0 are dropped: no effect with the joint edge loss;
#   --pretrained names the ImageNet trunk the original loaded implicitly from pretrained_models/.
set -euo pipefail
GPUS=${GPUS:-8}
NNODES=${NNODES:-1}
BS_MULT=${BS_MULT:-2}
EXP_DIR=${EXP_DIR:-./vaihingen}
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
  --dataset Vaihingen \
  --cv 0 \
  --arch pfnet_r50 \
  --pretrained ./pretrained_models/resnet50-deep.pth \
  --lr 0.01 \
  --lr_schedule poly \
  --poly_exp 0.9 \
  --max_epoch 200 \
  --syncbn \
  --sgd \
  --maxpool_size 14 \
  --avgpool_size 9 \
  --edge_points 128 \
  --match_dim 64 \
  --joint_edge_loss_pfnet \
  --edge_weight 25.0 \
  --ohem \
  --crop_size 768 \
  --scale_min 0.5 \
  --scale_max 2.0 \
  --with_aug \
  --bs_mult "${BS_MULT}" \
  --exp r50 \
  --ckpt "${EXP_DIR}" \
  --tb_path "${EXP_DIR}" \
  "$@" 2>&1 | tee "${EXP_DIR}/log_${now}.txt"
