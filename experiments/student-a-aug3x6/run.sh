#!/usr/bin/env bash
# Student A, longer augmented distillation (ratio 3, 6 epochs), bf16 autocast.
set -euo pipefail
b=runs/student-a/s6-bin; d=../shared/data/conll2003; r=runs/student-a
T=runs/conll2003-minilm-recovery/01-teacher/best
$b train distill $r/student-a --teacher $T --train $d/train.txt --dev $d/valid.txt --test $d/test.txt \
  --out $r/a-aug3x6 --epochs 6 --lr 3e-4 --alpha 0.5 --temperature 2 \
  --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --seed 42 \
  --augment mention,token --augment-ratio 3 --precision bf16 --force
