#!/usr/bin/env bash
# The original's name for: bash scripts/train.sh configs/pointflow/potsdam_r50.yaml (GPUS=N in the environment, default 8), then train.py flags
exec bash "$(dirname "$0")/../train.sh" "$(dirname "$0")/../../configs/pointflow/potsdam_r50.yaml" "${GPUS:-8}" "$@"
