#!/usr/bin/env bash
# Timings that need a quiet machine: SparseGPT on the whole model, and inference tokens/s of the
# teacher and of the compressed models on the CoNLL test set (batch 32, bucketed).
# Usage: [SPARSEGPT=0] experiments/speed/speed.sh TEACHER_DIR MODEL_DIR...   (SPARSEGPT=0: inference only)
set -euo pipefail
teacher=${1:?teacher}; shift
data=${DATA:-../shared/data/conll2003}
bin=./target/release/surgery
out=${OUT:-runs/speed}
mkdir -p "$out"
patterns=("--sparsity 0.5" "--pattern 2:4")
[ "${SPARSEGPT:-1}" = 0 ] && patterns=()
for pattern in "${patterns[@]}"; do
  # shellcheck disable=SC2086
  $bin sparsegpt "$teacher" "$out/sgpt" $pattern --calib "$data/train.txt" --calib-sentences 256 --force --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin)['report']; print(json.dumps({'what': 'sparsegpt-time', 'pattern': r['pattern'], 'seconds': r['seconds'], 'seconds_forward': r['seconds_forward'], 'seconds_solve': r['seconds_solve'], 'calibration_tokens': r['calibration_tokens'], 'mean_relative_output_error': r['mean_relative_output_error']}))"
done
for model in "$teacher" "$@"; do
  $bin eval "$model" --data "$data/test.txt" --batch-size 32 --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'what': 'inference', 'model': '$model', 'tokens_per_s': r['tokens_per_s'], 'f1': r['f1']}))"
done
