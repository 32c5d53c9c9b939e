#!/usr/bin/env bash
# The cut families on the fine-tuned MiniLM teacher: for each cut, unique parameters, test F1 right
# after the cut, and test F1 after a short recovery fine-tune. Results: runs/cuts/results.jsonl.
# Usage: experiments/cuts/cuts.sh TEACHER_DIR [RECOVERY_STEPS] [NAME...]
set -euo pipefail
teacher=${1:?teacher checkpoint}
steps=${2:-200}
shift 2 || true
data=${DATA:-../shared/data/conll2003}
out=${OUT:-runs/cuts}
bin=./target/release/surgery
mkdir -p "$out"

# name | surgery command (input and output appended by run_cut)
cuts=(
  "emb-e64|factorize-embeddings --rank 64"
  "emb-e128|factorize-embeddings --rank 128"
  "tie-pairs|tie-layers --groups 0-1,2-3,4-5"
  "lowrank-svd-50|lowrank-layers --params-target PARAMS50 --method svd"
  "lowrank-whiten-50|lowrank-layers --params-target PARAMS50 --method whiten --calib $data/train.txt --calib-sentences 256"
  "drop-3of6|drop-layers --keep 1,3,5"
  "prune-vocab|prune-vocab --corpus $data/train.txt --coverage $data/test.txt"
  "sparsegpt-50|sparsegpt --sparsity 0.5 --calib $data/train.txt"
  "magnitude-50|sparsegpt --sparsity 0.5 --calib $data/train.txt --method magnitude"
  "sparsegpt-2of4|sparsegpt --pattern 2:4 --calib $data/train.txt"
  "magnitude-2of4|sparsegpt --pattern 2:4 --calib $data/train.txt --method magnitude"
  "sparsegpt-70|sparsegpt --sparsity 0.7 --calib $data/train.txt"
  "magnitude-70|sparsegpt --sparsity 0.7 --calib $data/train.txt --method magnitude"
)

# Half of the encoder's linear parameters: unique params minus half of the six linears' weights.
params50=$($bin inspect "$teacher" --json | python3 -c "
import json,sys; b=json.load(sys.stdin)['budget']
lin=sum(c['unique'] for c in b['components'] if c['component'] in ('attention_query','attention_key','attention_value','attention_output','ffn_in','ffn_out'))
print(b['unique'] - lin // 2)")

test_f1() { $bin eval "$1" --data "$data/test.txt" --json | python3 -c "import json,sys; r=json.load(sys.stdin); print(r['f1'], r['tokens_per_s'])"; }

for entry in "${cuts[@]}"; do
  name=${entry%%|*}
  cmd=${entry#*|}
  cmd=${cmd//PARAMS50/$params50}
  if [ "$#" -gt 0 ] && [[ ! " $* " == *" $name "* ]]; then continue; fi
  dir="$out/$name"
  rm -rf "$dir"; mkdir -p "$dir"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  $bin $cmd "$teacher" "$dir/cut" --json > "$dir/cut.json"
  cut_s=$(python3 -c "print(round($(date +%s.%N) - $start, 2))")
  read -r f1_cut tps_cut < <(test_f1 "$dir/cut")
  $bin train finetune "$dir/cut" --train "$data/train.txt" --dev "$data/valid.txt" --out "$dir/recovery" \
    --epochs 1 --max-steps "$steps" --lr 5e-5 --batch-size 32 --seed 42 --log-every 50 > "$dir/recovery.log" 2>&1
  read -r f1_rec tps_rec < <(test_f1 "$dir/recovery/best")
  python3 - "$dir/cut.json" "$name" "$cut_s" "$f1_cut" "$f1_rec" "$tps_rec" "$steps" >> "$out/results.jsonl" <<'PY'
import json, sys
cut = json.load(open(sys.argv[1]))
name, secs, f1_cut, f1_rec, tps, steps = sys.argv[2:8]
print(json.dumps({"name": name, "op": cut["op"], "args": cut["args"], "params_before": cut["params_before"],
                  "params_after": cut["params_after"], "cut_seconds": float(secs),
                  "test_f1_after_cut": float(f1_cut), "test_f1_after_recovery": float(f1_rec),
                  "recovery_steps": int(steps), "eval_tokens_per_s": float(tps),
                  "report": {k: v for k, v in cut["report"].items() if k != "details"}}))
PY
  tail -1 "$out/results.jsonl"
done
