#!/bin/sh
# Evaluate a Posdam checkpoint as the original PFSegNets script did (whole image, single scale, no flip).
# Usage: sh test_posdam896_pfnet_r50.sh CHECKPOINT OUTPUT_ROOT [extra eval.py flags]
# Results go to OUTPUT_ROOT/<checkpoint's grandparent folder>/test/ (metrics.json, metrics.csv, report.html).
# Difference from the original script: it omitted --maxpool_size, so Potsdam was scored with eval.py's old
# default 9 although the model was trained with 14. This script passes 14 (the training value); append
# '--maxpool_size 9' to reproduce the original run exactly.
if [ "$#" -lt 2 ]; then
    echo "usage: sh $0 CHECKPOINT OUTPUT_ROOT [extra eval.py flags]" >&2
    exit 2
fi
checkpoint=$1
output_root=$2
shift 2
echo "Running inference on" "${checkpoint}"
echo "Saving Results :" "${output_root}"
${PYTHON:-python} "$(dirname "$0")/../../../eval.py" \
    --dataset Posdam \
    --arch network.pointflow_resnet_with_max_avg_pool.DeepR50_PF_maxavg_deeply \
    --inference_mode whole \
    --single_scale \
    --scales 1.0 \
    --split test \
    --cv_split 0 \
    --maxpool_size 14 \
    --avgpool_size 9 \
    --edge_points 128 \
    --match_dim 64 \
    --resize_scale 896 \
    --mode semantic \
    --no_flip \
    --ckpt_path "${output_root}" \
    --snapshot "${checkpoint}" \
    "$@"
