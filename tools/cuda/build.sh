#!/usr/bin/env bash
# Builds the `cuda` binary on a machine without a GPU or a CUDA install, for NVIDIA GPUs of
# compute capability 9.0 (H100/H200; set CUDA_COMPUTE_CAP for others) whose driver supports
# CUDA 13.0. The compiler, headers and libraries come from NVIDIA's PyPI wheels (≈ 830 MB);
# libcuda, which comes with the GPU's driver, is replaced at link time by a stub of empty
# functions. Output: target/cuda/release/surgery, and dist/cuda/surgery.xz to carry.
#
#   tools/cuda/build.sh             # ~40 min of CPU time on 2 cores, most of it candle's kernels
#
# CUDA 13.0 exactly: PTX made by a newer nvcc is refused by a 13.0 driver. The binary links
# libcuda.so.1, libcublas.so.13, libcudart.so.13 and libcurand.so.10: put the GPU machine's CUDA
# 13 libraries on LD_LIBRARY_PATH to run it (tools/cuda/measure.sh does).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
toolkit="${SURGERY_CUDA_TOOLKIT:-$root/target/cuda-toolkit}"
target="$root/target/cuda"
if [[ -e "$target/STUB-KERNELS" ]]; then
  echo "$target was made with a stub nvcc (tools/cuda/check.sh): refusing to build in it" >&2
  exit 1
fi

# 1. The toolkit, pinned to CUDA 13.0.
wheels=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
        nvidia-curand==10.4.0.35 nvidia-cublas==13.1.0.3)
cuda="$toolkit/py/nvidia/cu13"
if [[ ! -x "$cuda/bin/nvcc" ]]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$toolkit/py" "${wheels[@]}"
fi
# The linker wants unversioned library names.
for lib in cublas cublasLt cudart curand nvrtc; do
  versioned=$(ls "$cuda/lib/lib$lib.so."* 2>/dev/null | grep -v alt | head -1 || true)
  [[ -n "$versioned" ]] && ln -sf "$(basename "$versioned")" "$cuda/lib/lib$lib.so"
done

# 2. libcuda for the linker: every driver entry point cudarc can load, as an empty function.
cargo fetch --quiet
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)
mkdir -p "$cuda/lib/link-stubs"
grep -ohE 'load::<_F>\("cu[A-Za-z0-9_]+"\)' "$cudarc/src/driver/sys/mod.rs" \
  | sed -E 's/.*"(cu[A-Za-z0-9_]+)".*/void \1(void) {}/' | sort -u > "$toolkit/libcuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/link-stubs/libcuda.so" "$toolkit/libcuda-stub.c"

# 3. The build, in its own target dir, stripped (the binary is carried to the GPU machine).
export CUDA_HOME="$cuda" CUDA_PATH="$cuda" PATH="$cuda/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$cuda/lib:$cuda/lib/link-stubs:${LIBRARY_PATH:-}"
export CARGO_TARGET_DIR="$target" CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_DEBUG=false
nice cargo build --release --features cuda -j "${JOBS:-2}" --bin surgery
mkdir -p dist/cuda
xz -T0 -6 -c "$target/release/surgery" > dist/cuda/surgery.xz.tmp && mv dist/cuda/surgery.xz.tmp dist/cuda/surgery.xz
ls -l "$target/release/surgery" dist/cuda/surgery.xz
echo "built: run it on the GPU machine with tools/cuda/measure.sh (carry dist/cuda)"
