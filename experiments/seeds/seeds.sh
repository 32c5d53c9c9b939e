#!/usr/bin/env bash
# a-aug4 (student A, 4 epochs of KD on training + augmented sentences) with seeds 43 and 44;
# seed 42 is runs/student-a/a-aug4. The seed sets initialisation of nothing here (the student is
# the cut model), but it sets shuffling, dropout and the augmentation.
set -euo pipefail
b=runs/student-a/seeds-bin; d=../shared/data/conll2003; r=runs/student-a
T=runs/conll2003-minilm-recovery/01-teacher/best
for seed in 43 44; do
  $b train distill $r/student-a --teacher $T --train $d/train.txt --dev $d/valid.txt --test $d/test.txt \
    --out $r/a-aug4-s$seed --epochs 4 --lr 3e-4 --alpha 0.5 --temperature 2 \
    --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --seed $seed \
    --augment mention,token --augment-ratio 1 --force
done
