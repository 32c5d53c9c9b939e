#!/usr/bin/env bash
# The full-vocabulary student A (aug + hidden MSE) distilled 6 epochs
# instead of 4 (dev was still rising +1 point in epoch 4); bf16, seed $1.
# runs/s8-bin: the binary of commit e42a236. Seed 42 first; seeds 43 and 44 ran
# (runs/s8/queue.sh, queue2.sh) because seed 42 beat the 4-epoch three-seed mean dev F1 (0.8864).
set -euo pipefail
b=runs/s8-bin; d=../shared/data/conll2003; r=runs/s8
T=runs/conll2003-minilm-recovery/01-teacher/best
seed=${1:-42}
$b train distill runs/s7/student-fv6 --teacher $T --train $d/train.txt --dev $d/valid.txt --test $d/test.txt \
  --out $r/a6-s$seed --epochs 6 --lr 3e-4 --alpha 0.5 --temperature 2 --hidden-weight 1 \
  --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --seed $seed \
  --augment mention,token --augment-ratio 1 --precision bf16 --force
