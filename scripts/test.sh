#!/bin/sh
# Evaluate a checkpoint with an eval.py protocol file, as the original's test scripts did.
#
#   sh scripts/test.sh PROTOCOL CHECKPOINT OUTPUT_ROOT [more eval.py flags]
#   sh scripts/test.sh configs/pointflow/test/isaid_r50.yaml pfnet_r50_iSAID.pth results
#
# Results go to OUTPUT_ROOT/<the checkpoint's grandparent folder>/<split>/ (metrics.json, metrics.csv,
# report.html); --out_dir names the folder instead. Flags after OUTPUT_ROOT override the file. PYTHON picks the
# interpreter (default python).
if [ "$#" -lt 3 ] || [ ! -f "$1" ]; then
    echo "usage: sh $0 PROTOCOL CHECKPOINT OUTPUT_ROOT [more eval.py flags]: PROTOCOL is a YAML file," \
         "e.g. configs/pointflow/test/isaid_r50.yaml" >&2
    exit 2
fi
protocol=$1
checkpoint=$2
output_root=$3
shift 3
echo "Running inference on" "${checkpoint}"
echo "Saving Results :" "${output_root}"
exec ${PYTHON:-python} "$(dirname "$0")/../eval.py" --config "${protocol}" --ckpt_path "${output_root}" \
    --snapshot "${checkpoint}" "$@"
