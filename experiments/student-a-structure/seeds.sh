#!/usr/bin/env bash
# Seeds 43 and 44 of the full-vocabulary student A (student-fv6), with or without the
# hidden-state MSE, whichever had the better dev F1 at seed 42 (fv6-aug4 vs fv6-aug4-hid).
set -euo pipefail
while [ "$1" != 0 ] && kill -0 "$1" 2>/dev/null; do sleep 20; done
# runs/s7-bin: the binary of commit 8e29938.
b=runs/s7-bin; d=../shared/data/conll2003; r=runs/s7
T=runs/conll2003-minilm-recovery/01-teacher/best
dev() { python3 -c "import json; print(max(json.loads(l)['f1'] for l in open('$1/metrics.jsonl') if '\"dev\"' in l))"; }
plain=$(dev $r/fv6-aug4); hid=$(dev $r/fv6-aug4-hid)
extra=(); name=fv6-aug4
python3 -c "import sys; sys.exit(0 if $hid > $plain else 1)" && { extra=(--hidden-weight 1); name=fv6-aug4-hid; }
echo "dev: plain $plain, hidden $hid: seeds of $name"
for seed in 43 44; do
  $b train distill $r/student-fv6 --teacher $T --train $d/train.txt --dev $d/valid.txt --test $d/test.txt \
    --out $r/$name-s$seed --epochs 4 --lr 3e-4 --alpha 0.5 --temperature 2 "${extra[@]}" \
    --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --seed $seed \
    --augment mention,token --augment-ratio 1 --precision bf16 --force
done
