#!/usr/bin/env bash
# Inference speed of a pruned model against the teacher, on the same test batches (batch 32,
# length-sorted), alternating teacher and pruned model ROUNDS times back to back: in `surgery
# eval` (f32 and bf16) and in ONNX Runtime (f32 and int8 exports, 2 threads). The machine's load
# is recorded before and after; nothing else may run.
#   TEACHER=… PRUNED=runs/structured-pruning/structured-0.5 experiments/structured-pruning/speed.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
SURGERY=${SURGERY:-./target/release/surgery}
TEACHER=${TEACHER:?set TEACHER}
PRUNED=${PRUNED:?set PRUNED}
DATA=${DATA:-../shared/data/conll2003}
RAW=${RAW:-experiments/structured-pruning/raw}
ROUNDS=${ROUNDS:-2}
FILE=${FILE:-$DATA/test.txt}   # the sentences timed
mkdir -p "$RAW"
out="$RAW/speed.jsonl"
work=${WORK:-runs/structured-pruning/speed}
mkdir -p "$work"
: > "$out"
for which in teacher pruned; do
  ckpt=$([ "$which" = teacher ] && echo "$TEACHER" || echo "$PRUNED")
  "$SURGERY" export "$ckpt" "$work/$which-f32" --force > /dev/null
  "$SURGERY" export "$ckpt" "$work/$which-int8" --quantize int8 --force > /dev/null
  "$SURGERY" eval "$ckpt" --data "$FILE" --write-predictions "$work/$which-pred.txt" --force > /dev/null
done
echo "{\"uptime_before\": \"$(uptime)\", \"file\": \"$FILE\"}" >> "$out"
for round in $(seq "$ROUNDS"); do
  for precision in f32 bf16; do
    for which in teacher pruned; do
      ckpt=$([ "$which" = teacher ] && echo "$TEACHER" || echo "$PRUNED")
      tps=$("$SURGERY" eval "$ckpt" --data "$FILE" --precision "$precision" --json \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['tokens_per_s'])")
      echo "{\"round\": $round, \"runtime\": \"surgery\", \"precision\": \"$precision\", \"model\": \"$which\", \"tokens_per_s\": $tps}" >> "$out"
    done
  done
  for precision in f32 int8; do
    for which in teacher pruned; do
      tps=$(python3 tools/checks/onnx_check.py eval "$work/$which-$precision" \
              --predictions "$work/$which-pred.txt" --batch-size 32 --f1-tol 1 --surgery "$SURGERY" \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['tokens_per_s'])")
      echo "{\"round\": $round, \"runtime\": \"onnxruntime\", \"precision\": \"$precision\", \"model\": \"$which\", \"tokens_per_s\": $tps}" >> "$out"
    done
  done
done
echo "{\"uptime_after\": \"$(uptime)\"}" >> "$out"
python3 - "$out" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
for runtime, p in (("surgery", "f32"), ("surgery", "bf16"), ("onnxruntime", "f32"), ("onnxruntime", "int8")):
    t = [r["tokens_per_s"] for r in rows if (r["runtime"], r["precision"], r["model"]) == (runtime, p, "teacher")]
    s = [r["tokens_per_s"] for r in rows if (r["runtime"], r["precision"], r["model"]) == (runtime, p, "pruned")]
    print(f"{runtime} {p}: teacher {statistics.median(t):.0f} tok/s, pruned {statistics.median(s):.0f} tok/s, ratio {statistics.median(s) / statistics.median(t):.2f}x (medians of {len(t)})")
PY
