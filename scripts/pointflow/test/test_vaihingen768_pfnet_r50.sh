#!/bin/sh
# The original's name for: sh scripts/test.sh configs/pointflow/test/vaihingen_r50.yaml CHECKPOINT OUTPUT_ROOT [flags]
exec sh "$(dirname "$0")/../../test.sh" "$(dirname "$0")/../../../configs/pointflow/test/vaihingen_r50.yaml" "$@"
