#!/usr/bin/env bash
# Fine-tuning speed of the generic kernels (standard candle ops, the path any device runs) against
# the fused CPU kernels, back to back: MiniLM on CoNLL-2003, 30 steps, batch 32, f32.
# Usage: experiments/generic-kernels-cpu/run.sh MODEL DATA_DIR   (writes runs/generic-speed)
set -euo pipefail
model=${1:?model dir}
data=${2:?data dir}
head -2000 "$data/valid.txt" > runs/dev-small.txt
for kernels in fused generic; do
  ./target/release/surgery train finetune "$model" --train "$data/train.txt" --dev runs/dev-small.txt \
    --out "runs/generic-speed/$kernels" --force --kernels "$kernels" --max-steps 30 --log-every 10 \
    --batch-size 32 --lr 1e-4 --seed 42 2>&1 | grep -E "^step|throughput"
done
