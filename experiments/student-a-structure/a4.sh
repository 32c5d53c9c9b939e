#!/usr/bin/env bash
# (1) what the pruned vocabulary alone costs the teacher; (2) student A with 4 of 6
# layers and higher ranks at the same budget, distilled as a-aug4 (bf16).
set -euo pipefail
# runs/s7-bin: the binary of commit 8e29938.
b=runs/s7-bin; d=../shared/data/conll2003; r=runs/s7
T=runs/conll2003-minilm-recovery/01-teacher/best
V=runs/student-a/vocab
$b eval $V --data $d/valid.txt --json > $r/vocab-teacher-dev.json
$b eval $V --data $d/test.txt --json > $r/vocab-teacher-test.json
$b drop-layers runs/student-a/vocab-emb48 $r/l4-emb48 --keep 0,2,3,5 --force
$b lowrank-layers $r/l4-emb48 $r/student-a4 --method whiten --calib $d/train.txt --params-target 4197804 --force
$b inspect $r/student-a4 > $r/student-a4.inspect.txt
$b train distill $r/student-a4 --teacher $T --train $d/train.txt --dev $d/valid.txt --test $d/test.txt \
  --out $r/a4-aug4 --epochs 4 --lr 3e-4 --alpha 0.5 --temperature 2 \
  --cache-teacher runs/conll2003-minilm-recovery-teacher-cache --seed 42 \
  --augment mention,token --augment-ratio 1 --precision bf16 --force
