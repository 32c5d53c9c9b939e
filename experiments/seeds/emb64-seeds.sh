#!/usr/bin/env bash
# Emb64-kd6 (E = 64 embeddings, 6 epochs of KD, f32) with seeds 43 and 44; seed 42 is
# recipe step 06 of conll2003-minilm-recovery.
set -euo pipefail
b=runs/s7-head-bin; d=../shared/data/conll2003; r=runs/s7
for seed in 43 44; do
  $b train distill runs/conll2003-minilm-recovery/02-emb64 --out $r/emb64-kd6-s$seed --alpha 0.5 \
    --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --dev $d/valid.txt --epochs 6 --lr 0.0001 \
    --seed $seed --teacher runs/conll2003-minilm-recovery/01-teacher/best --temperature 2 \
    --test $d/test.txt --train $d/train.txt --force
done
