#!/usr/bin/env bash
# Alternating A/B of surgery binaries on short fine-tunes (issue 14): each binary runs STEPS
# length-bucketed steps of 32 from MODEL, twice, in turn; prints the training throughput of each
# run. The dev set is cut to 40 sentences so evaluation does not dominate. Nothing else should
# run meanwhile. Usage: [STEPS=80] [PREC=f32|bf16] experiments/cpu-speed/ab_train.sh MODEL BIN_A BIN_B…
set -euo pipefail
model=${1:?pre-trained model dir}; shift
data=${DATA:-../shared/data/conll2003}
out=${OUT:-runs/ab-train}
mkdir -p "$out"
awk 'BEGIN{n=0} /^$/{n++} n<40{print}' "$data/valid.txt" > "$out/dev-40.txt"
for round in 1 2; do
  for bin in "$@"; do
    t=$("$bin" train finetune "$model" --train "$data/train.txt" --dev "$out/dev-40.txt" --out "$out/run" --force \
      --epochs 3 --batch-size 32 --lr 1e-4 --seed 42 --max-steps "${STEPS:-80}" --log-every 40 --precision "${PREC:-f32}" 2>&1 \
      | grep -o 'training throughput [0-9]*')
    echo "round $round $bin ${PREC:-f32}: $t real tokens/s"
  done
done
