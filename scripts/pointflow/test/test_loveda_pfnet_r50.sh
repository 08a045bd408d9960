#!/bin/sh
# Evaluate a LoveDA checkpoint on the val split: whole 1024x1024 images, single scale, no flip.
# Usage: sh test_loveda_pfnet_r50.sh CHECKPOINT OUTPUT_ROOT [extra eval.py flags]
# Results go to OUTPUT_ROOT/<checkpoint's grandparent folder>/val/ (metrics.json, metrics.csv, report.html).
# The test split's labels are held by the LoveDA evaluation server: segment Test/ with predict.py instead.
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
    --dataset LoveDA \
    --arch pfnet_r50 \
    --inference_mode whole \
    --single_scale \
    --scales 1.0 \
    --split val \
    --maxpool_size 14 \
    --avgpool_size 9 \
    --edge_points 128 \
    --match_dim 64 \
    --no_flip \
    --ckpt_path "${output_root}" \
    --snapshot "${checkpoint}" \
    "$@"
