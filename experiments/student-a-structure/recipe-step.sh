#!/usr/bin/env bash
# Student A as recipes/conll2003-minilm-recovery.toml makes it, with the current build: steps
# full-emb48 and student-a-full (the cut, from the teacher) and a-full-aug6-hid (seed 42), run
# as their commands. TEACHER is the recipe's teacher step (train finetune, seed 42; it
# reproduces exactly: dev 0.9036, test 0.8660). Output under runs/student-a-recipe/.
#   TEACHER=runs/conll2003-minilm-recovery/01-teacher/best experiments/student-a-structure/recipe-step.sh
# The run kept in a-full-aug6-hid-s42/ was made by these commands with outputs under runs/sa42/
# (its log: a-full-aug6-hid-s42/recipe-step.log).
set -euo pipefail
b=${SURGERY:-./target/release/surgery}; d=${DATA:-../shared/data/conll2003}; r=runs/student-a-recipe
T=${TEACHER:?the teacher checkpoint}
mkdir -p $r
$b factorize-embeddings $T $r/full-emb48 --rank 48
$b lowrank-layers $r/full-emb48 $r/student-a-full --method whiten --calib $d/train.txt --params-target 4197804
$b train distill $r/student-a-full --teacher $T --out $r/a-full-aug6-hid \
  --train $d/train.txt --dev $d/valid.txt --test $d/test.txt --epochs 6 --lr 3e-4 --alpha 0.5 \
  --temperature 2 --hidden-weight 1 --cache-teacher $r/teacher-cache --seed 42 \
  --augment mention,token --augment-ratio 1 --precision bf16
