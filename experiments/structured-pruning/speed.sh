#!/usr/bin/env bash
# Inference speed of a pruned model against the teacher in `surgery eval` (f32 and bf16), on
# the same test batches, alternating teacher and pruned model ROUNDS times back to back; the
# machine's load is recorded before and after (a shared machine makes the ratio indicative).
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
: > "$out"
echo "{\"uptime_before\": \"$(uptime)\", \"file\": \"$FILE\"}" >> "$out"
for round in $(seq "$ROUNDS"); do
  for precision in f32 bf16; do
    for which in teacher pruned; do
      ckpt=$([ "$which" = teacher ] && echo "$TEACHER" || echo "$PRUNED")
      tps=$("$SURGERY" eval "$ckpt" --data "$FILE" --precision "$precision" --json \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['tokens_per_s'])")
      echo "{\"round\": $round, \"precision\": \"$precision\", \"model\": \"$which\", \"tokens_per_s\": $tps}" >> "$out"
    done
  done
done
echo "{\"uptime_after\": \"$(uptime)\"}" >> "$out"
python3 - "$out" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
for p in ("f32", "bf16"):
    t = [r["tokens_per_s"] for r in rows if r["precision"] == p and r["model"] == "teacher"]
    s = [r["tokens_per_s"] for r in rows if r["precision"] == p and r["model"] == "pruned"]
    print(f"{p}: teacher {statistics.median(t):.0f} tok/s, pruned {statistics.median(s):.0f} tok/s, ratio {statistics.median(s) / statistics.median(t):.2f}x (medians of {len(t)})")
PY
