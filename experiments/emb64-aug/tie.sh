#!/usr/bin/env bash
# Recipe step tie's three tied pairs distilled like e64.sh (augmented data +
# hidden-state MSE, bf16, 6 epochs, lr 1e-4), seed 42 only. runs/s9-bin = the binary of commit 4c02c5e.
set -euo pipefail
d=../shared/data/conll2003
runs/s9-bin train distill runs/conll2003-minilm-recovery/04-tie --teacher runs/conll2003-minilm-recovery/01-teacher/best \
  --train $d/train.txt --dev $d/valid.txt --test $d/test.txt --out runs/s9/tie-aug-hid-s42 --epochs 6 --lr 1e-4 \
  --alpha 0.5 --temperature 2 --hidden-weight 1 --cache-teacher runs/conll2003-minilm-recovery-teacher-cache \
  --seed 42 --augment mention,token --augment-ratio 1 --precision bf16 --force
