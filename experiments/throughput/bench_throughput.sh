#!/usr/bin/env bash
# Training and inference throughput, surgery vs Hugging Face + PyTorch (2 threads), in one sitting.
# Usage: experiments/throughput/bench_throughput.sh MODEL_DIR TEACHER_DIR [STEPS]
#   MODEL_DIR    the pre-trained checkpoint to fine-tune (e.g. ../shared/models/minilm-l6-h384-uncased)
#   TEACHER_DIR  a fine-tuned checkpoint with a classifier, for the forward (eval) comparison
# Needs: target/release/surgery, python3 with torch, transformers, seqeval. Nothing else may run.
set -euo pipefail
model=${1:?model dir}
teacher=${2:?fine-tuned checkpoint}
steps=${3:-150}
data=${DATA:-../shared/data/conll2003}
out=${OUT:-runs/bench}
mkdir -p "$out"
common=(--epochs 3 --batch-size 32 --lr 1e-4 --seed 42)

echo "== training: surgery (length-bucketed batches), $steps steps"
./target/release/surgery train finetune "$model" --train "$data/train.txt" --dev "$data/valid.txt" \
  --out "$out/surgery-train" --force "${common[@]}" --max-steps "$steps" --log-every 50 2>&1 \
  | grep -E "training throughput|padding" | tee "$out/surgery-train.txt"

for batching in random bucketed; do
  echo "== training: HF + PyTorch ($batching batches), $steps steps"
  python3 tools/checks/hf_reference.py train --model "$model" --train "$data/train.txt" --dev "$data/valid.txt" \
    --batching "$batching" "${common[@]}" --max-steps "$steps" | tail -1 | tee "$out/hf-train-$batching.json"
done

echo "== inference (eval mode, batch 32, bucketed): surgery"
./target/release/surgery eval "$teacher" --data "$data/test.txt" --batch-size 32 --json \
  | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'what':'surgery-forward','tokens_per_s':r['tokens_per_s'],'f1':r['f1']}))" \
  | tee "$out/surgery-forward.json"
echo "== inference: HF + PyTorch"
python3 tools/checks/hf_reference.py forward --model "$teacher" --data "$data/test.txt" --batch-size 32 \
  | tail -1 | tee "$out/hf-forward.json"
