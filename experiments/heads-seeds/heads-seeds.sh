#!/usr/bin/env bash
# The heads recipe's two KD recoveries (36 of 72 heads kept by gates / by importance,
# 3 epochs KL·τ² + CE, α 0.5, τ 2, lr 5e-5, f32) rerun with seeds 43 and 44; seed 42 is the
# recipe's own run. The cut itself (gates trained with seed 42, importance scores) is not rerun:
# the seeds measure the recovery's noise. runs/s9-bin = the binary of commit 4c02c5e.
set -euo pipefail
b=runs/s9-bin; d=../shared/data/conll2003; r=runs/s9; h=runs/conll2003-minilm-heads
for cut in gates importance; do
  for seed in 43 44; do
    $b train distill $h/0$([ $cut = gates ] && echo 2 || echo 4)-heads-$cut --out $r/heads-$cut-kd-s$seed \
      --teacher runs/conll2003-minilm-recovery/01-teacher/best --train $d/train.txt --dev $d/valid.txt \
      --test $d/test.txt --epochs 3 --lr 5e-5 --alpha 0.5 --temperature 2 \
      --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --seed $seed --force
  done
done
