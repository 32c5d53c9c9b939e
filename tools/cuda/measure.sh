#!/usr/bin/env bash
# The GPU call: run on the GPU machine (device tool) from the repository root with dist/gpu
# carried (tools/cuda/build.sh, then tools/cuda/pack.sh). Writes JSON and logs under $OUT:
#   parity.json    check-device: logits, every gradient, a 20-step loss curve, every structure
#   speed.jsonl    MiniLM fine-tuning tokens/s at f32 / tf32 / bf16, batch 32 and 128, surgery and
#                  PyTorch eager on the same length-bucketed batches; bert-base shapes (random
#                  weights); peak GPU memory of each
#   teacher.json   the MiniLM teacher fine-tuned on the GPU (3 epochs), its time and test F1
# Usage: tools/cuda/measure.sh [parity|speed|teacher|all]
#   SURGERY_DEVICE=cpu STEPS=3 tools/cuda/measure.sh speed   # rehearse the script on the CPU
set -uo pipefail
cd "$(dirname "$0")/../.."
stage=${1:-all}
out=${OUT:-runs/gpu}
device=${SURGERY_DEVICE:-cuda}
steps=${STEPS:-150}
mkdir -p "$out/runs"
log() { echo "$(date +%T) $*" | tee -a "$out/measure.log"; }

bin=dist/gpu/surgery
[[ -x $bin ]] || { xz -dc dist/gpu/surgery.xz > "$bin" && chmod +x "$bin"; }
py=${PYTHON:-/opt/torch/.venv/bin/python}
[[ -x $py ]] || py=python3
if [[ $device == cuda* ]]; then
  # The machine's PyTorch ships the CUDA 13 libraries the binary links.
  lib=$("$py" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')
  export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1
fi
{ ldd --version | head -1; ldd "$bin"; } > "$out/ldd.txt" 2>&1
model=dist/gpu/minilm
data=dist/gpu/conll2003

# Runs a command while sampling the GPU's used memory every 0.2 s; appends the peak (MiB).
peak_mib=0
with_peak() {
  local samples
  samples=$(mktemp)
  if command -v nvidia-smi >/dev/null; then
    (while sleep 0.2; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done) > "$samples" &
    local sampler=$!
  fi
  "$@"
  local rc=$?
  if [[ -n ${sampler:-} ]]; then
    kill "$sampler" 2>/dev/null
    peak_mib=$(sort -n "$samples" | tail -1)
  fi
  rm -f "$samples"
  return $rc
}

# The median tokens/s of a surgery run's logged windows after the first (warm-up, PTX load).
tokens_per_s() {
  "$py" -c 'import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
tps = [l["tokens_per_s"] for l in lines if "tokens_per_s" in l][1:]
print(statistics.median(tps) if tps else 0)' "$1/metrics.jsonl"
}

surgery_speed() { # name model precision batch [tf32]
  local name=$1 ckpt=$2 precision=$3 batch=$4 tf32=${5:-0} run="$out/runs/$1"
  log "surgery $name"
  SURGERY_TF32=$tf32 with_peak "$bin" train finetune "$ckpt" --train "$data/train.txt" \
    --dev "$data/valid.txt" --out "$run" --force --device "$device" --precision "$precision" \
    --batch-size "$batch" --max-steps "$steps" --log-every 10 --lr 1e-4 --seed 42 \
    > "$run.log" 2>&1 || { log "FAILED: $name (see $run.log)"; return; }
  echo "{\"who\": \"surgery\", \"run\": \"$name\", \"precision\": \"$precision\", \"tf32\": $tf32, \"batch\": $batch, \"tokens_per_s\": $(tokens_per_s "$run"), \"peak_mib\": ${peak_mib:-0}}" >> "$out/speed.jsonl"
}

torch_speed() { # name model autocast batch tf32
  local name=$1 ckpt=$2 autocast=$3 batch=$4 tf32=$5
  log "pytorch $name"
  with_peak "$py" tools/checks/hf_reference.py train --model "$ckpt" --train "$data/train.txt" \
    --dev "$data/valid.txt" --batching bucketed --batch-size "$batch" --max-steps "$steps" \
    --lr 1e-4 --seed 42 --device "$device" --autocast "$autocast" --tf32 "$tf32" \
    > "$out/runs/$name.log" 2>&1 || { log "FAILED: $name"; return; }
  "$py" -c 'import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(json.dumps({"who": "pytorch", "run": sys.argv[2], "autocast": sys.argv[3], "tf32": int(sys.argv[4]),
                  "batch": int(sys.argv[5]), "tokens_per_s": r["train_tokens_per_s"], "peak_mib": int(sys.argv[6])}))' \
    "$out/runs/$name.log" "$name" "$autocast" "$tf32" "$batch" "${peak_mib:-0}" >> "$out/speed.jsonl"
}

if [[ $stage == parity || $stage == all ]]; then
  log "parity"
  "$bin" check-device --device "$device" --json > "$out/parity.json" 2> "$out/parity.log" \
    || log "parity: differences above the tolerances (see parity.json)"
fi

if [[ $stage == speed || $stage == all ]]; then
  for batch in 32 128; do
    surgery_speed "minilm-f32-b$batch" "$model" f32 "$batch" 0
    surgery_speed "minilm-tf32-b$batch" "$model" f32 "$batch" 1
    surgery_speed "minilm-bf16-b$batch" "$model" bf16 "$batch" 0
    torch_speed "torch-minilm-f32-b$batch" "$model" none "$batch" 0
    torch_speed "torch-minilm-tf32-b$batch" "$model" none "$batch" 1
    torch_speed "torch-minilm-bf16-b$batch" "$model" bf16 "$batch" 0
  done
  log "bert-base shapes (random weights)"
  "$bin" init-student "$out/bert-base" --like "$model" --layers 12 --hidden 768 --heads 12 \
    --intermediate 3072 --force > "$out/bert-base.log" 2>&1
  for precision in f32 bf16; do
    surgery_speed "bert-base-$precision-b32" "$out/bert-base" "$precision" 32 0
  done
  surgery_speed "bert-base-tf32-b32" "$out/bert-base" f32 32 1
fi

if [[ $stage == teacher || $stage == all ]]; then
  log "teacher: 3 epochs"
  start=$(date +%s)
  with_peak "$bin" train finetune "$model" --train "$data/train.txt" --dev "$data/valid.txt" \
    --test "$data/test.txt" --epochs 3 --batch-size 32 --lr 1e-4 --seed 42 --device "$device" \
    --out "$out/runs/teacher" --force > "$out/runs/teacher.log" 2>&1 || log "FAILED: teacher"
  seconds=$(( $(date +%s) - start ))
  "$py" -c 'import json, sys
t = json.load(open(sys.argv[1]))
print(json.dumps({"seconds": int(sys.argv[2]), "peak_mib": int(sys.argv[3]), "test_f1": t.get("f1")}))' \
    "$out/runs/teacher/test.json" "$seconds" "${peak_mib:-0}" > "$out/teacher.json" || true
fi
# Checkpoints stay behind: only the measurements come back.
rm -rf "$out/runs"/*/best "$out/runs"/*/last "$out/bert-base"
log "done"
