#!/usr/bin/env bash
# Structured pruning of the MiniLM CoNLL-2003 teacher without retraining: prune-structured
# (Fisher scores, joint search, with and without reconstruction) at a list of encoder-FLOPs
# fractions, against heads only (remove-heads --by importance) and magnitude neuron pruning
# (prune-neurons --by magnitude) at the same FLOPs where those can reach it. Every model is
# evaluated on dev (valid.txt) and test; every command's JSON output goes to raw/.
#
#   TEACHER=runs/…/best experiments/structured-pruning/run.sh
# Variables: TEACHER, DATA, OUT (models), BUDGETS, CALIB_N, HELDOUT_N, HEADS_ONLY (FLOPs fractions for the
# heads-only baseline), SURGERY (the binary). A step whose raw output exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
SURGERY=${SURGERY:-./target/release/surgery}
TEACHER=${TEACHER:?set TEACHER to the fine-tuned teacher checkpoint}
DATA=${DATA:-../shared/data/conll2003}
OUT=${OUT:-runs/structured-pruning}
RAW=${RAW:-experiments/structured-pruning/raw}
BUDGETS=${BUDGETS:-0.5 0.6 0.4 0.3}
HEADS_ONLY=${HEADS_ONLY:-0.8}
CALIB_N=${CALIB_N:-512}
HELDOUT_N=${HELDOUT_N:-200}
mkdir -p "$OUT" "$RAW"
uptime > "$RAW/uptime-start.txt"

evaluate() { # name checkpoint
  for split in dev test; do
    file=$([ "$split" = dev ] && echo valid.txt || echo test.txt)
    [ -s "$RAW/$1-$split.json" ] && continue
    nice -n 5 "$SURGERY" eval "$2" --data "$DATA/$file" --json > "$RAW/$1-$split.json.tmp"
    mv "$RAW/$1-$split.json.tmp" "$RAW/$1-$split.json"
  done
}

# prune NAME ARGS…: runs a surgery into $OUT/NAME, keeps its JSON report and wall time.
prune() {
  local name=$1; shift
  if [ ! -s "$RAW/$name.json" ]; then
    local t0=$(date +%s%N)
    nice -n 5 "$SURGERY" "$@" "$OUT/$name" --force --json > "$RAW/$name.json.tmp"
    echo "{\"wall_ms\": $(( ($(date +%s%N) - t0) / 1000000 )), \"uptime\": \"$(uptime)\"}" > "$RAW/$name.time.json"
    mv "$RAW/$name.json.tmp" "$RAW/$name.json"
  fi
  "$SURGERY" inspect "$OUT/$name" --json > "$RAW/$name-inspect.json"
  evaluate "$name" "$OUT/$name"
}

evaluate teacher "$TEACHER"
"$SURGERY" inspect "$TEACHER" --json > "$RAW/teacher-inspect.json"
# FLOPs per token of the teacher, of its attention (all heads) and of one neuron / one head.
read -r TOTAL ATTN NEURON HEAD HEADS < <(python3 - "$RAW/teacher-inspect.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
total = r["flops_per_token"]
attn = sum(l["attention"] for l in r["flops"]["layers"])
heads = sum(l["num_heads"] for l in r["budget"]["layers"])
neurons = sum(l["intermediate"] for l in r["budget"]["layers"])
ffn = total - attn
print(total, attn, ffn // neurons, attn // heads, heads)
PY
)

for r in $BUDGETS; do
  prune "structured-$r" prune-structured "$TEACHER" --flops "$r" --calib "$DATA/train.txt" \
    --calib-sentences "$CALIB_N" --heldout "$DATA/valid.txt" --heldout-sentences "$HELDOUT_N"
  prune "structured-$r-norecon" prune-structured "$TEACHER" --flops "$r" --calib "$DATA/train.txt" \
    --calib-sentences "$CALIB_N" --no-reconstruct
  # Magnitude neurons only: every head kept, the neurons the budget leaves.
  keep=$(python3 -c "print(int(($r * $TOTAL - $ATTN) // $NEURON))")
  if [ "$keep" -gt 0 ]; then
    prune "magnitude-neurons-$r" prune-neurons "$TEACHER" --keep "$keep" --by magnitude
  else
    echo "magnitude neurons at $r: infeasible (all heads alone cost more)" > "$RAW/magnitude-neurons-$r.infeasible"
  fi
done

for r in $HEADS_ONLY; do
  # Heads only: every neuron kept, the heads the budget leaves (by importance).
  keep=$(python3 -c "import math; print($HEADS - math.ceil(((1 - $r) * $TOTAL) / $HEAD))")
  prune "heads-only-$r" remove-heads "$TEACHER" --keep "$keep" --by importance --data "$DATA/train.txt" \
    --data-sentences "$CALIB_N"
  prune "structured-$r" prune-structured "$TEACHER" --flops "$r" --calib "$DATA/train.txt" \
    --calib-sentences "$CALIB_N" --heldout "$DATA/valid.txt" --heldout-sentences "$HELDOUT_N"
  prune "structured-$r-norecon" prune-structured "$TEACHER" --flops "$r" --calib "$DATA/train.txt" \
    --calib-sentences "$CALIB_N" --no-reconstruct
done
uptime > "$RAW/uptime-end.txt"
python3 experiments/structured-pruning/table.py "$RAW" > experiments/structured-pruning/table.md
