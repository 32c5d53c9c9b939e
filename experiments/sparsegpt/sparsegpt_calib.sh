#!/usr/bin/env bash
# SparseGPT without training (issue 17): test F1 and the mean relative output error on the
# calibration sentences and on 1,000 held-out dev sentences, for several calibration sizes and
# dampings, unstructured 50% and 2:4. One JSON line per setting.
# Usage: experiments/sparsegpt/sparsegpt_calib.sh TEACHER_DIR [SIZES] [DAMPS]
#   e.g. experiments/sparsegpt/sparsegpt_calib.sh runs/…/01-teacher/best "256 1024 4096" "0.01 0.1"
set -euo pipefail
teacher=${1:?teacher checkpoint}
sizes=${2:-256 1024 4096}
damps=${3:-0.01}
data=${DATA:-../shared/data/conll2003}
bin=${BIN:-./target/release/surgery}
out=${OUT:-runs/sparsegpt-calib}
mkdir -p "$out"
for pattern in "--sparsity 0.5" "--pattern 2:4"; do
  for n in $sizes; do
    for damp in $damps; do
      # shellcheck disable=SC2086
      $bin sparsegpt "$teacher" "$out/model" $pattern --calib "$data/train.txt" --calib-sentences "$n" \
        --damp "$damp" --heldout "$data/valid.txt" --heldout-sentences 1000 --force --json > "$out/cut.json"
      $bin eval "$out/model" --data "$data/test.txt" --json > "$out/eval.json"
      python3 - "$out/cut.json" "$out/eval.json" "$n" "$damp" <<'PY'
import json, sys
cut, ev = json.load(open(sys.argv[1]))["report"], json.load(open(sys.argv[2]))
print(json.dumps({"what": "sparsegpt-calib", "pattern": cut["pattern"], "calib_sentences": int(sys.argv[3]),
                  "damp": float(sys.argv[4]), "calibration_tokens": cut["calibration_tokens"],
                  "calibration_error": cut["mean_relative_output_error"],
                  "heldout_error": cut["mean_heldout_relative_output_error"],
                  "seconds": cut["seconds"], "test_f1": ev["f1"]}))
PY
    done
  done
done
