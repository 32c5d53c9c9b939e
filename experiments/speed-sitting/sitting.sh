#!/usr/bin/env bash
# Every speed figure of README.md and docs/results.md, re-measured in one sitting on a quiet
# machine (nothing else may run; the load is recorded before and after):
#   1. fine-tuning (STEPS steps of 32, length-bucketed) and inference (`eval`, test set, batch 32)
#      of surgery f32 / bf16 against PyTorch f32 / bf16 autocast (experiments/cpu-speed/cpu_speed.sh);
#   2. the wall time of `prune-structured --flops 0.5 --calib-sentences 512` on the teacher;
#   3. that 50%-FLOPs model against the teacher in `surgery eval` f32 / bf16 and ONNX Runtime
#      f32 / int8, alternating, ROUNDS rounds (experiments/structured-pruning/speed.sh).
# Writes RAW/sitting-N.jsonl (one JSON line per figure) and prints a summary.
# Usage: experiments/speed-sitting/sitting.sh MODEL_DIR TEACHER_DIR N
# Needs: target/release/surgery; python3 with torch, transformers, seqeval, onnxruntime, onnx.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:?pre-trained model dir}
teacher=${2:?fine-tuned teacher checkpoint}
sitting=${3:?sitting number}
steps=${STEPS:-100}
rounds=${ROUNDS:-2}
data=${DATA:-../shared/data/conll2003}
raw=${RAW:-experiments/speed-sitting/raw}
work=${WORK:-runs/speed-sitting}
bin=./target/release/surgery
mkdir -p "$raw" "$work"
out="$raw/sitting-$sitting.jsonl"
: > "$out"
note() { echo "$1" | tee -a "$out"; }

note "{\"what\": \"sitting\", \"n\": $sitting, \"commit\": \"$(git rev-parse --short HEAD)\", \"date\": \"$(date -u +%FT%TZ)\", \"uptime_before\": \"$(uptime)\"}"

# 1. Training and inference against PyTorch.
OUT="$work/cpu" experiments/cpu-speed/cpu_speed.sh "$model" "$teacher" "$steps" > "$work/cpu.txt"
grep '^{' "$work/cpu.txt" >> "$out"

# 2. The structured cut's wall time (and the model timed in 3).
start=$(date +%s.%N)
$bin prune-structured "$teacher" "$work/structured-0.5" --flops 0.5 --calib "$data/train.txt" \
  --calib-sentences 512 --force --quiet > /dev/null
end=$(date +%s.%N)
note "{\"what\": \"prune-structured-seconds\", \"flops\": 0.5, \"calib_sentences\": 512, \"seconds\": $(python3 -c "print(round($end - $start, 2))")}"

# 3. The 50%-FLOPs model against the teacher in four runtimes.
TEACHER="$teacher" PRUNED="$work/structured-0.5" ROUNDS="$rounds" RAW="$work/structured" \
  WORK="$work/structured-work" experiments/structured-pruning/speed.sh > "$work/structured.txt"
python3 -c "
import json
for l in open('$work/structured/speed.jsonl'):
    r = json.loads(l)
    if 'tokens_per_s' in r:
        r['what'] = 'structured-speed'
        print(json.dumps(r))" >> "$out"

note "{\"what\": \"sitting-end\", \"n\": $sitting, \"uptime_after\": \"$(uptime)\"}"

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for what in ("train", "infer"):
    by = {r["who"]: r["tokens_per_s"] for r in rows if r.get("what") == what}
    f32, bf16 = by["pytorch-none"], by["pytorch-bf16"]
    print(f"{what}: surgery f32 {by['surgery']:,.0f} tok/s = {by['surgery'] / f32:.2f}x PyTorch f32; "
          f"surgery bf16 {by['surgery-bf16']:,.0f} = {by['surgery-bf16'] / bf16:.2f}x PyTorch bf16 "
          f"(PyTorch {f32:,.0f} / {bf16:,.0f})")
for r in rows:
    if r.get("what") == "prune-structured-seconds":
        print(f"prune-structured --flops 0.5: {r['seconds']:.1f} s")
s = [r for r in rows if r.get("what") == "structured-speed"]
for runtime, p in (("surgery", "f32"), ("surgery", "bf16"), ("onnxruntime", "f32"), ("onnxruntime", "int8")):
    t = statistics.median(r["tokens_per_s"] for r in s if (r["runtime"], r["precision"], r["model"]) == (runtime, p, "teacher"))
    m = statistics.median(r["tokens_per_s"] for r in s if (r["runtime"], r["precision"], r["model"]) == (runtime, p, "pruned"))
    print(f"50% FLOPs, {runtime} {p}: teacher {t:,.0f}, pruned {m:,.0f} tok/s, {m / t:.2f}x")
PY
