#!/usr/bin/env bash
# a-kd8 (student A, 8 epochs of plain KD, f32) with seeds 43 and 44, after the
# a-aug3x6 run ends; seed 42 is runs/student-a/a-kd8 (the first run).
set -euo pipefail
while [ "$1" != 0 ] && kill -0 "$1" 2>/dev/null; do sleep 20; done
# runs/final-bin: the binary of commit 3317f8f.
b=runs/final-bin; d=../shared/data/conll2003; r=runs/student-a
T=runs/conll2003-minilm-recovery/01-teacher/best
for seed in 43 44; do
  $b train distill $r/student-a --teacher $T --train $d/train.txt --dev $d/valid.txt --test $d/test.txt \
    --out $r/a-kd8-s$seed --epochs 8 --lr 3e-4 --alpha 0.5 --temperature 2 \
    --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --seed $seed --force
done
