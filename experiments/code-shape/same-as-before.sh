#!/usr/bin/env bash
# Runs the quickstart recipe (fine-tune, cut, recover, eval, budget; then a resume), every cut and
# every training command with two `surgery` binaries, and compares the tensors and metrics they
# write and the recipe's `--dry-run` output. Usage: same-as-before.sh OLD_BINARY NEW_BINARY WORKDIR
set -euo pipefail
old=$1 new=$2 work=$3
rm -rf "$work"; mkdir -p "$work"
for who in old new; do
  bin=${!who}
  d=$work/$who
  "$bin" quickstart --out "$d/qs" > "$d.quickstart.log" 2>&1
  "$bin" run "$d/qs/quickstart.toml" --set dir="$d/qs" --runs "$d/qs" > "$d.resume.log" 2>&1
  t=$d/qs/quickstart/01-finetune/best
  data=$d/qs/data
  "$bin" factorize-embeddings "$t" "$d/cut-factorize" --rank 8 > /dev/null
  "$bin" tie-layers "$t" "$d/cut-tie" --share-all > /dev/null
  "$bin" drop-layers "$t" "$d/cut-drop" --keep 1 > /dev/null
  "$bin" lowrank-layers "$t" "$d/cut-lowrank" --method whiten --calib "$data/train.txt" --params-target 80k > /dev/null
  "$bin" sparsegpt "$t" "$d/cut-sparsegpt" --sparsity 0.5 --calib "$data/train.txt" > /dev/null
  "$bin" magnitude "$t" "$d/cut-magnitude" --pattern 2:4 > /dev/null
  "$bin" remove-heads "$t" "$d/cut-heads" --keep 4 --by importance --data "$data/dev.txt" > /dev/null
  "$bin" prune-vocab "$t" "$d/cut-vocab" --corpus "$data/train.txt" > /dev/null
  "$bin" prune-neurons "$t" "$d/cut-neurons" --keep-ratio 0.5 --by fisher --calib "$data/train.txt" > /dev/null
  "$bin" prune-structured "$t" "$d/cut-structured" --flops 0.5 --calib "$data/train.txt" > /dev/null
  common=(--train "$data/train.txt" --dev "$data/dev.txt" --epochs 1 --batch-size 16 --max-len 64 --seed 3)
  "$bin" train distill "$d/cut-factorize" --teacher "$t" --out "$d/train-distill" "${common[@]}" > /dev/null
  "$bin" train gates "$t" --target-heads 4 --out "$d/train-gates" "${common[@]}" > /dev/null
  "$bin" train focal "$t" --out "$d/train-focal" "${common[@]}" > /dev/null
  "$bin" eval "$t" --data "$data/test.txt" --json > "$d.eval.json"
  "$bin" run "$d/qs/quickstart.toml" --set dir="$d/qs" --runs "$d/qs" --dry-run | sed "s#$d#DIR#g" > "$d.dry-run.txt"
done
python3 - "$work" <<'PY'
import json, sys, pathlib
import numpy as np
from safetensors.numpy import load_file
work = pathlib.Path(sys.argv[1])
same = differ = 0
for f in sorted((work / "old").rglob("model.safetensors")):
    g = work / "new" / f.relative_to(work / "old")
    a, b = load_file(f), load_file(g)
    ok = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    same += ok; differ += not ok
    if not ok: print("DIFFERENT", f.relative_to(work / "old"))
for f in sorted((work / "old").rglob("metrics.jsonl")):
    g = work / "new" / f.relative_to(work / "old")
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if not k.endswith("tokens_per_s") and k not in ("seconds", "elapsed")} for l in open(p)]
    ok = strip(f) == strip(g)
    same += ok; differ += not ok
    if not ok: print("DIFFERENT", f.relative_to(work / "old"))
e = [json.load(open(work / f"{w}.eval.json")) for w in ("old", "new")]
ok = e[0]["f1"] == e[1]["f1"] and e[0]["report"] == e[1]["report"]
same += ok; differ += not ok
ok = open(work / "old.dry-run.txt").read() == open(work / "new.dry-run.txt").read()
same += ok; differ += not ok
if not ok: print("DIFFERENT --dry-run output")
print(f"{same} files identical, {differ} different")
PY
