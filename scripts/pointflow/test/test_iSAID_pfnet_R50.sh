#!/bin/sh
# Evaluate an iSAID checkpoint as the original PFSegNets script did (whole image, single scale, no flip).
# Usage: sh test_iSAID_pfnet_R50.sh CHECKPOINT OUTPUT_ROOT [extra eval.py flags]
# Results go to OUTPUT_ROOT/<checkpoint's grandparent folder>/val/ (metrics.json, metrics.csv, report.html).
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
    --dataset iSAID \
    --arch network.pointflow_resnet_with_max_avg_pool.DeepR50_PF_maxavg_deeply \
    --inference_mode whole \
    --single_scale \
    --scales 1.0 \
    --split val \
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
