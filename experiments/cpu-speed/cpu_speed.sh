#!/usr/bin/env bash
# CPU speed side by side (issue 14), one sitting, 2 threads, nothing else running: fine-tuning
# (STEPS steps, length-bucketed batches of 32) and inference (`eval`, test set, batch 32) for
# surgery at f32 and with --precision bf16 — and, when BASE_BIN is set, an earlier surgery binary —
# against Hugging Face + PyTorch in f32 and with bf16 autocast. STUDENTS (checkpoint folders)
# adds surgery's inference on compressed models. Prints one JSON line per measurement, then the
# ratios against PyTorch f32 and bf16.
# INFER_ONLY=1 skips the fine-tuning runs (an inference-only sitting).
# Usage: [BASE_BIN=old/surgery] [STUDENTS="a b"] [INFER_ONLY=1] experiments/cpu-speed/cpu_speed.sh MODEL_DIR TEACHER_DIR [STEPS]
set -euo pipefail
model=${1:?pre-trained model dir}
teacher=${2:?fine-tuned checkpoint}
steps=${3:-100}
data=${DATA:-../shared/data/conll2003}
out=${OUT:-runs/cpu-speed}
mkdir -p "$out"
bins=("surgery:${BIN:-./target/release/surgery}")
[ -n "${BASE_BIN:-}" ] && bins+=("surgery-base:$BASE_BIN")
{
for entry in "${bins[@]}"; do
  name=${entry%%:*}; bin=${entry#*:}
  precisions=(f32)
  # --precision exists only in newer builds; an older BASE_BIN runs f32 only.
  $bin train finetune --help | grep -q -- --precision && precisions+=(bf16)
  for precision in "${precisions[@]}"; do
    flag=(); [ "$precision" = bf16 ] && flag=(--precision bf16)
    who=$name; [ "$precision" = bf16 ] && who=$name-bf16
    [ -z "${INFER_ONLY:-}" ] && $bin train finetune "$model" --train "$data/train.txt" --dev "$data/valid.txt" --out "$out/$who-train" \
      --force --epochs 3 --batch-size 32 --lr 1e-4 --seed 42 --max-steps "$steps" --log-every 50 "${flag[@]}" 2>&1 \
      | python3 -c "import re,sys,json; t=[float(m.group(1)) for l in sys.stdin for m in [re.search(r'training throughput (\d+)', l)] if m]; print(json.dumps({'what': 'train', 'who': '$who', 'tokens_per_s': t[-1]}))"
    for m in "$teacher" ${STUDENTS:-}; do
      what=infer; [ "$m" != "$teacher" ] && what="infer $(basename "$(dirname "$m")")/$(basename "$m")"
      $bin eval "$m" --data "$data/test.txt" --batch-size 32 --json "${flag[@]}" \
        | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'what': '$what', 'who': '$who', 'tokens_per_s': r['tokens_per_s'], 'f1': r['f1']}))"
    done
  done
done
for cast in none bf16; do
  [ -z "${INFER_ONLY:-}" ] && python3 tools/checks/hf_reference.py train --model "$model" --train "$data/train.txt" --dev "$data/valid.txt" \
    --batching bucketed --epochs 3 --batch-size 32 --lr 1e-4 --seed 42 --max-steps "$steps" --autocast $cast \
    | tail -1 | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'what': 'train', 'who': 'pytorch-$cast', 'tokens_per_s': r['train_tokens_per_s']}))"
  python3 tools/checks/hf_reference.py forward --model "$teacher" --data "$data/test.txt" --batch-size 32 --autocast $cast \
    | tail -1 | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'what': 'infer', 'who': 'pytorch-$cast', 'tokens_per_s': r['tokens_per_s'], 'f1': r['f1']}))"
done
} | tee "$out/results.jsonl"
python3 - "$out/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for what in ("train", "infer"):
    by = {r["who"]: r["tokens_per_s"] for r in rows if r["what"] == what}
    if not by:
        continue
    f32, bf16 = by["pytorch-none"], by["pytorch-bf16"]
    print(what + ": " + ", ".join(f"{who} {tps:,.0f} tok/s ({tps / f32:.2f}× PyTorch f32, {tps / bf16:.2f}× bf16)" for who, tps in by.items()))
for r in rows:
    if r["what"].startswith("infer "):
        print(f"{r['what']} {r['who']}: {r['tokens_per_s']:,.0f} tok/s, F1 {r['f1']:.4f}")
PY
