#!/usr/bin/env bash
# Which cut of the MiniLM teacher makes the best student under budget A (18.6% of the teacher)?
# Each candidate is distilled for the same short run (STEPS, KL·τ² + CE) and compared on dev F1.
#   c1-drop2-e16     : layers 1,4 kept, rank-16 embeddings over the full vocabulary (the first student A)
#   c2-vocab-drop2   : vocabulary pruned to the training corpus, rank-32 embeddings, layers 1,4, heads to fit
#   c3-vocab-4l-lr   : vocabulary pruned, rank-48 embeddings, layers 0,2,3,5, whitened low-rank linears to fit
#   c4-vocab-6l-lr   : vocabulary pruned, rank-48 embeddings, all 6 layers, whitened low-rank linears to fit
# Usage: experiments/student-search/student_search.sh TEACHER_DIR [STEPS]    Results: runs/student-search/results.jsonl
set -euo pipefail
teacher=${1:?teacher checkpoint}
steps=${2:-300}
data=${DATA:-../shared/data/conll2003}
out=${OUT:-runs/student-search}
bin=./target/release/surgery
mkdir -p "$out"
budget=$($bin inspect "$teacher" --json | python3 -c "import json,sys; print(int(json.load(sys.stdin)['budget']['unique'] * 0.186))")
echo "budget: $budget unique parameters"
unique() { $bin inspect "$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['budget']['unique'])"; }

[ -d "$out/vocab" ] || $bin prune-vocab "$teacher" "$out/vocab" --corpus "$data/train.txt" > /dev/null
# c1: the first student A.
if [ ! -d "$out/c1" ]; then
  $bin drop-layers "$teacher" "$out/c1-a" --keep 1,4 > /dev/null
  $bin factorize-embeddings "$out/c1-a" "$out/c1-b" --rank 16 > /dev/null
  $bin remove-heads "$out/c1-b" "$out/c1" --keep 23 --by importance --data "$data/train.txt" > /dev/null
fi
# c2: pruned vocabulary, rank 32, two layers, then as many heads as the budget allows.
if [ ! -d "$out/c2" ]; then
  $bin factorize-embeddings "$out/vocab" "$out/c2-a" --rank 32 > /dev/null
  $bin drop-layers "$out/c2-a" "$out/c2-b" --keep 1,4 > /dev/null
  over=$(( $(unique "$out/c2-b") - budget ))
  per_head=$(( 4 * 384 * 32 + 3 * 32 ))
  keep=$(( 24 - (over + per_head - 1) / per_head ))
  $bin remove-heads "$out/c2-b" "$out/c2" --keep "$keep" --by importance --data "$data/train.txt" > /dev/null
fi
# c3, c4: pruned vocabulary, rank 48, low-rank (whitened) linears sized to the budget.
if [ ! -d "$out/c3" ]; then
  $bin factorize-embeddings "$out/vocab" "$out/e48" --rank 48 > /dev/null
  $bin drop-layers "$out/e48" "$out/c3-a" --keep 0,2,3,5 > /dev/null
  $bin lowrank-layers "$out/c3-a" "$out/c3" --method whiten --calib "$data/train.txt" --params-target "$budget" > /dev/null
fi
[ -d "$out/c4" ] || $bin lowrank-layers "$out/e48" "$out/c4" --method whiten --calib "$data/train.txt" --params-target "$budget" > /dev/null

for c in c1 c2 c3 c4; do
  [ -f "$out/$c-kd/test.json" ] && continue
  start=$(date +%s)
  $bin train distill "$out/$c" --teacher "$teacher" --out "$out/$c-kd" --train "$data/train.txt" \
    --dev "$data/valid.txt" --test "$data/test.txt" --epochs 1 --max-steps "$steps" --lr 3e-4 \
    --batch-size 32 --seed 42 --log-every 50 --alpha 0.5 --temperature 2 \
    --cache-teacher runs/distill/teacher-cache --force > "$out/$c-kd.log" 2>&1
  secs=$(( $(date +%s) - start ))
  python3 - "$out/$c-kd" "$c" "$secs" >> "$out/results.jsonl" <<'PY'
import json, sys
run, name, secs = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = json.load(open(f"{run}/run.json")); t = json.load(open(f"{run}/test.json"))
dev = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"dev"' in l]
print(json.dumps({"name": name, "unique_parameters": r["unique_parameters"], "steps": r["steps"],
  "best_dev_f1": max(d["f1"] for d in dev), "test_f1": t["report"]["micro"]["f1"], "seconds": secs}))
PY
  tail -1 "$out/results.jsonl"
done
