#!/usr/bin/env bash
# Student A with the teacher's full vocabulary (30,522 pieces, rank-48 embeddings),
# six layers, the ranks shrunk to the same budget; distilled as a-aug4 (bf16).
set -euo pipefail
while [ "$1" != 0 ] && kill -0 "$1" 2>/dev/null; do sleep 20; done
# runs/s7-bin: the binary of commit 8e29938.
b=runs/s7-bin; d=../shared/data/conll2003; r=runs/s7
T=runs/conll2003-minilm-recovery/01-teacher/best
$b lowrank-layers $r/full-emb48 $r/student-fv6 --method whiten --calib $d/train.txt --params-target 4197804 --force
$b inspect $r/student-fv6 > $r/student-fv6.inspect.txt
$b train distill $r/student-fv6 --teacher $T --train $d/train.txt --dev $d/valid.txt --test $d/test.txt \
  --out $r/fv6-aug4 --epochs 4 --lr 3e-4 --alpha 0.5 --temperature 2 \
  --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --seed 42 \
  --augment mention,token --augment-ratio 1 --precision bf16 --force
