#!/usr/bin/env bash
# Packs what the GPU call needs into dist/gpu (≤ 64 MiB, the device tool's carry limit):
# the cuda binary (xz), a pre-trained checkpoint in f16 (half the bytes; read back as f32) and
# the CoNLL-2003 files. Usage: tools/cuda/pack.sh MODEL_DIR DATA_DIR
#   e.g. tools/cuda/pack.sh ../shared/models/minilm-l6-h384-uncased ../shared/data/conll2003
# Needs python3 with torch and safetensors (for the f16 copy). The data is not redistributable:
# dist/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:?model dir}
data=${2:?data dir}
mkdir -p dist/gpu/minilm dist/gpu/conll2003
if [[ -f dist/cuda/surgery.xz ]]; then
  cp dist/cuda/surgery.xz dist/gpu/surgery.xz
else
  echo "dist/cuda/surgery.xz is missing: run tools/cuda/build.sh first (packing the rest)" >&2
fi
cp "$model/config.json" "$model/tokenizer.json" dist/gpu/minilm/
python3 - "$model/model.safetensors" dist/gpu/minilm/model.safetensors <<'PY'
import sys
import torch
from safetensors.torch import load_file, save_file
tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(sys.argv[1]).items()}
save_file(tensors, sys.argv[2], metadata={"format": "pt"})
PY
cp "$data"/{train,valid,test}.txt dist/gpu/conll2003/
du -sh dist/gpu
