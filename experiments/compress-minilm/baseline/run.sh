#!/usr/bin/env bash
# The plain two-command answer to "30% of the encoder FLOPs" that compress is compared with:
# structured pruning, then 5 epochs of distillation (seed 42). Usage: run.sh TEACHER OUT
set -euo pipefail
teacher=$1 out=$2 data=../shared/data/conll2003
surgery=${SURGERY:-target/release/surgery}
"$surgery" prune-structured "$teacher" "$out/cut" --flops 0.3 --calib "$data/train.txt" --calib-sentences 512
"$surgery" train distill "$out/cut" --teacher "$teacher" --train "$data/train.txt" --dev "$data/valid.txt" \
  --test "$data/test.txt" --out "$out/kd" --epochs 5 --lr 5e-5 --alpha 0.5 --temperature 2 \
  --cache-teacher "$out/teacher-cache.safetensors" --seed 42
