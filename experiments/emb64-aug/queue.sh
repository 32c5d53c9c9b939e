#!/usr/bin/env bash
# The rule, written before seed 42 ends: seeds 43 and 44 run only if seed 42's best dev F1 beats
# emb64-kd6's three-seed mean dev F1 (0.8884); otherwise the change is not adopted.
set -uo pipefail
s=experiments/emb64-aug
$s/e64.sh 42
best=$(python3 -c 'import json,sys; print(max(json.loads(l)["f1"] for l in open(sys.argv[1]) if "\"eval\":\"dev\"" in l))' runs/s9/e64-aug-hid-s42/metrics.jsonl)
echo "seed 42 best dev $best"
if python3 -c "import sys; sys.exit(0 if $best > 0.8884 else 1)"; then
  $s/e64.sh 43 && $s/e64.sh 44
else
  echo "dev did not beat 0.8884: no further seeds"
fi
