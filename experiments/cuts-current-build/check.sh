#!/usr/bin/env bash
# Do the recipes' cuts still make the models the kept runs started from? Each cut below is made
# from the teacher with the current build, as its recipe step makes it, and its dev F1 before
# any training (a one-step fine-tuning run's step-0 evaluation, the same evaluation and
# precision as the kept run's) is printed beside the one the kept run logged at step 0.
#   TEACHER=runs/conll2003-minilm-recovery/01-teacher/best experiments/cuts-current-build/check.sh
set -euo pipefail
b=${SURGERY:-./target/release/surgery}; d=${DATA:-../shared/data/conll2003}; r=runs/cuts-current-build
T=${TEACHER:?the teacher checkpoint}
mkdir -p $r
step0() {  # name, kept run, extra training flags
  $b train finetune $r/$1 --out $r/$1-step0 --train $d/train.txt --dev $d/valid.txt \
    --max-steps 1 --seed 42 ${3:-} --force > $r/$1-step0.log 2>&1
  python3 - "$r/$1-step0/metrics.jsonl" "$2/metrics.jsonl" "$1" <<'PY'
import json, sys
def first_dev(path):
    return next(j["f1"] for j in map(json.loads, open(path)) if j.get("eval") == "dev")
now, kept = first_dev(sys.argv[1]), first_dev(sys.argv[2])
print(json.dumps({"cut": sys.argv[3], "dev_f1_now": now, "dev_f1_kept_run": kept, "equal": now == kept}))
PY
}
$b factorize-embeddings $T $r/emb64 --rank 64 --force > /dev/null
step0 emb64 experiments/recovery/06-emb64-kd6
$b tie-layers $T $r/tie --groups 0-1,2-3,4-5 --force > /dev/null
step0 tie experiments/recovery/07-tie-kd6
$b remove-heads $T $r/heads-importance --keep 36 --by importance --data $d/train.txt --force > /dev/null
step0 heads-importance experiments/heads-kd/importance
$b sparsegpt $T $r/sparse50 --sparsity 0.5 --calib $d/train.txt --calib-sentences 1024 \
  --heldout $d/valid.txt --heldout-sentences 1000 --force > /dev/null
step0 sparse50 experiments/sparsegpt/recovery/02-sparse50-kd "--precision bf16"
$b sparsegpt $T $r/sparse24 --pattern 2:4 --calib $d/train.txt --calib-sentences 1024 \
  --heldout $d/valid.txt --heldout-sentences 1000 --force > /dev/null
step0 sparse24 experiments/sparsegpt/recovery/04-sparse24-kd "--precision bf16"

# The SparseGPT cuts differ slightly from the kept runs' (above); their recipe steps'
# distillation (sparse50-kd, sparse24-kd: 2 epochs, bf16, seed 42) re-run from them.
[ "${DISTILL:-1}" = 1 ] || exit 0
for cut in sparse50 sparse24; do
  $b train distill $r/$cut --teacher $T --out $r/$cut-kd --train $d/train.txt --dev $d/valid.txt \
    --test $d/test.txt --epochs 2 --lr 5e-5 --alpha 0.5 --temperature 2 --cache-teacher $r/teacher-cache \
    --seed 42 --precision bf16 --force > $r/$cut-kd.log 2>&1
  grep "test F1" $r/$cut-kd.log | sed "s/^/$cut-kd: /"
done
