#!/usr/bin/env bash
# Deployment speed, one sitting, CoNLL test set, 2 threads, batch 32 and batch 1:
# the teacher in PyTorch f32 (the anchor), the teacher and a student exported to ONNX (f32 and
# int8) in ONNX Runtime, both in surgery's own runtime, and ONNX Runtime's own quantize_dynamic
# of the teacher as a cross-check of `--quantize int8`. Each line is JSON with tokens/s,
# ms per batch and test F1. Nothing else may run.
# Usage: experiments/onnx/onnx_bench.sh TEACHER_DIR STUDENT_DIR
# Needs: target/release/surgery; python3 with torch, transformers, seqeval, onnxruntime, onnx, tokenizers.
set -euo pipefail
teacher=${1:?teacher checkpoint}
student=${2:?student checkpoint}
data=${DATA:-../shared/data/conll2003}/test.txt
bin=./target/release/surgery
out=${OUT:-runs/onnx-bench}
mkdir -p "$out"

for pair in "teacher:$teacher" "student:$student"; do
  name=${pair%%:*}; model=${pair#*:}
  $bin export "$model" "$out/$name-f32" --force >/dev/null
  $bin export "$model" "$out/$name-int8" --quantize int8 --force >/dev/null
  for bs in 32 1; do
    $bin eval "$model" --data "$data" --batch-size "$bs" --json --write-predictions "$out/$name-pred.txt" --force \
      | python3 -c "import json,sys,math; r=json.load(sys.stdin); n=3453; print(json.dumps({'what': 'surgery-runtime', 'model': '$name', 'batch_size': $bs, 'tokens_per_s': r['tokens_per_s'], 'ms_per_batch': 1000*r['seconds']/math.ceil(n/$bs), 'f1': r['f1']}))"
    for kind in f32 int8; do
      python3 tools/checks/onnx_check.py eval "$out/$name-$kind" --predictions "$out/$name-pred.txt" --batch-size "$bs" --f1-tol 1
    done
  done
done

# ONNX Runtime's own dynamic quantizer on the f32 teacher export (per channel, int8 weights).
rm -rf "$out/teacher-ortq" && cp -r "$out/teacher-f32" "$out/teacher-ortq"
python3 -c "
from onnxruntime.quantization import quantize_dynamic, QuantType
quantize_dynamic('$out/teacher-f32/model.onnx', '$out/teacher-ortq/model.onnx', per_channel=True, weight_type=QuantType.QInt8)"
for bs in 32 1; do
  python3 tools/checks/onnx_check.py eval "$out/teacher-ortq" --predictions "$out/teacher-pred.txt" --batch-size "$bs" --f1-tol 1
done

for bs in 32 1; do
  python3 tools/checks/hf_reference.py forward --model "$teacher" --data "$data" --batch-size "$bs" | tail -1
done
