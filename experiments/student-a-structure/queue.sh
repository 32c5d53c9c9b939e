#!/usr/bin/env bash
# Queue, after a6-s42: (1) seeds 43 and 44 of the 6-epoch student A if its dev F1 beats
# the 4-epoch student's three-seed mean (0.8864); (2) seeds 43 and 44 of tie-kd6 (f32, as the
# recipe's seed 42).
set -uo pipefail
while [ "$1" != 0 ] && kill -0 "$1" 2>/dev/null; do sleep 20; done
b=runs/s8-bin; d=../shared/data/conll2003; r=runs/s8
T=runs/conll2003-minilm-recovery/01-teacher/best
dev() { python3 -c "import json; print(max(json.loads(l)['f1'] for l in open('$1/metrics.jsonl') if '\"dev\"' in l))"; }
a6=$(dev $r/a6-s42); echo "a6-s42 best dev $a6"
if python3 -c "import sys; sys.exit(0 if $a6 > 0.8864 else 1)"; then
  for seed in 43 44; do runs/s8/a6.sh $seed; done
fi
for seed in 43 44; do
  $b train distill runs/conll2003-minilm-recovery/04-tie --out $r/tie-kd6-s$seed --alpha 0.5 \
    --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --dev $d/valid.txt --epochs 6 --lr 0.0001 \
    --seed $seed --teacher $T --temperature 2 --test $d/test.txt --train $d/train.txt --force
done
