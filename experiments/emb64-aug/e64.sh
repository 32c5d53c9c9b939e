#!/usr/bin/env bash
# The E = 64 student (recipe step emb64) distilled with student A's recipe: augmented
# data labelled by the teacher (mention,token, ratio 1) + hidden-state MSE (weight 1), bf16,
# 6 epochs, lr 1e-4 as in emb64-kd6. Seed $1. runs/s9-bin = the binary of commit 4c02c5e.
set -euo pipefail
b=runs/s9-bin; d=../shared/data/conll2003; r=runs/s9
T=runs/conll2003-minilm-recovery/01-teacher/best
seed=${1:-42}
$b train distill runs/conll2003-minilm-recovery/02-emb64 --teacher $T --train $d/train.txt --dev $d/valid.txt \
  --test $d/test.txt --out $r/e64-aug-hid-s$seed --epochs 6 --lr 1e-4 --alpha 0.5 --temperature 2 \
  --hidden-weight 1 --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --seed $seed \
  --augment mention,token --augment-ratio 1 --precision bf16 --force
