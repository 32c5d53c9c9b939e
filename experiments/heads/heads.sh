#!/usr/bin/env bash
# Head removal on the fine-tuned MiniLM teacher (72 heads): hard-concrete gates (one run of
# `train gates`, heads then ranked by their learned gate) vs. gradient importance (Michel et al.),
# keeping 48, 36, 24 and 12 heads, each followed by the same short recovery fine-tune.
# Results: runs/heads/results.jsonl; the gate trajectories: runs/heads/gates/gates.svg.
# Usage: [KEEPS="48 36"] experiments/heads/heads.sh TEACHER_DIR [GATE_STEPS] [RECOVERY_STEPS]
set -euo pipefail
teacher=${1:?teacher checkpoint}
gate_steps=${2:-300}
steps=${3:-100}
data=${DATA:-../shared/data/conll2003}
out=${OUT:-runs/heads}
bin=./target/release/surgery
mkdir -p "$out"
# The gate run is reused when it exists (e.g. to add more head counts: KEEPS="24 12").
[ -f "$out/gates/gates.json" ] || $bin train gates "$teacher" --out "$out/gates" --force --train "$data/train.txt" --dev "$data/valid.txt" \
  --epochs 1 --max-steps "$gate_steps" --lr 5e-5 --log-every 10 --target-heads 36 \
  --gate-lr 0.05 --seed 42 > "$out/gates.log" 2>&1
for keep in ${KEEPS:-48 36 24 12}; do
  for by in gates importance; do
    name="$by-$keep"
    if [ "$by" = gates ]; then sel=(--by gates --gates "$out/gates/gates.json"); else sel=(--by importance --data "$data/train.txt"); fi
    $bin remove-heads "$teacher" "$out/$name/cut" --keep "$keep" "${sel[@]}" --force --json > "$out/$name.cut.json"
    f1_cut=$($bin eval "$out/$name/cut" --data "$data/test.txt" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['f1'])")
    $bin train finetune "$out/$name/cut" --train "$data/train.txt" --dev "$data/valid.txt" --out "$out/$name/recovery" \
      --epochs 1 --max-steps "$steps" --lr 5e-5 --seed 42 --force > "$out/$name.recovery.log" 2>&1
    read -r f1 tps < <($bin eval "$out/$name/recovery/best" --data "$data/test.txt" --batch-size 32 --json \
      | python3 -c "import json,sys; r=json.load(sys.stdin); print(r['f1'], r['tokens_per_s'])")
    python3 -c "
import json; c=json.load(open('$out/$name.cut.json'))
print(json.dumps({'name': '$name', 'by': '$by', 'heads_kept': $keep, 'params_after': c['params_after'],
  'test_f1_after_cut': $f1_cut, 'test_f1_after_recovery': $f1, 'recovery_steps': $steps, 'eval_tokens_per_s': $tps,
  'heads_per_layer': c['report']['heads_per_layer']}))" >> "$out/results.jsonl"
    tail -1 "$out/results.jsonl"
  done
done
