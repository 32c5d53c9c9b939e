#!/usr/bin/env bash
# Hidden-state MSE (weight 1, word by word, uniform layer map) on top of augmented
# KD, on whichever student base had the better dev F1 (full vocabulary fv6 vs student A's
# a-aug4 seed 42, dev 0.8741); bf16, seed 42.
set -euo pipefail
while [ "$1" != 0 ] && kill -0 "$1" 2>/dev/null; do sleep 20; done
# runs/s7-bin: the binary of commit 8e29938.
b=runs/s7-bin; d=../shared/data/conll2003; r=runs/s7
T=runs/conll2003-minilm-recovery/01-teacher/best
best=$(python3 -c "import json; print(max(json.loads(l)['f1'] for l in open('$r/fv6-aug4/metrics.jsonl') if '\"dev\"' in l))")
S=runs/student-a/student-a; name=a-aug4-hid
python3 -c "import sys; sys.exit(0 if $best > 0.8741 else 1)" && { S=$r/student-fv6; name=fv6-aug4-hid; }
echo "fv6 best dev $best: student $S"
$b train distill $S --teacher $T --train $d/train.txt --dev $d/valid.txt --test $d/test.txt \
  --out $r/$name --epochs 4 --lr 3e-4 --alpha 0.5 --temperature 2 --hidden-weight 1 \
  --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --seed 42 \
  --augment mention,token --augment-ratio 1 --precision bf16 --force
