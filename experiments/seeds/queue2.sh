#!/usr/bin/env bash
# Queue (replaces queue.sh after its a6-s43 run): student A a6 seed 44; then seeds 43
# and 44 of the SparseGPT recoveries (50% and 2:4, 2 epochs of KD, bf16, as the sparse recipe's
# seed 42); then seeds 43 and 44 of tie-kd6 (f32, as the recovery recipe's seed 42).
set -uo pipefail
while [ "$1" != 0 ] && kill -0 "$1" 2>/dev/null; do sleep 20; done
b=runs/s8-bin; d=../shared/data/conll2003; r=runs/s8
T=runs/conll2003-minilm-recovery/01-teacher/best
C=runs/conll2003-minilm-recovery-teacher-cache
runs/s8/a6.sh 44
for seed in 43 44; do
  for cut in sparse50 sparse24; do
    $b train distill runs/conll2003-minilm-sparse/0$([ $cut = sparse50 ] && echo 1 || echo 3)-$cut \
      --out $r/$cut-kd-s$seed --alpha 0.5 --cache-teacher $C --dev $d/valid.txt --epochs 2 --lr 0.00005 \
      --precision bf16 --seed $seed --teacher $T --temperature 2 --test $d/test.txt --train $d/train.txt --force
  done
done
for seed in 43 44; do
  $b train distill runs/conll2003-minilm-recovery/04-tie --out $r/tie-kd6-s$seed --alpha 0.5 \
    --cache-teacher $C --dev $d/valid.txt --epochs 6 --lr 0.0001 \
    --seed $seed --teacher $T --temperature 2 --test $d/test.txt --train $d/train.txt --force
done
