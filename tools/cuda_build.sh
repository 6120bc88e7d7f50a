#!/usr/bin/env bash
# Configures and builds anyk with the CUDA kernels (-DANYK_CUDA=ON, Release) in its own directory,
# compile and link only: no GPU is needed. Usage: tools/cuda_build.sh [BUILD_DIR] [cmake args...]
# (default build-cuda). Uses ccache for C, C++ and CUDA when it is installed; JOBS sets the
# parallelism (default nproc); CUDA_BUILD_TARGETS (space-separated) builds only those targets
# (default: everything). Prints the configure and build times.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build-cuda
if [[ $# -gt 0 && $1 != -* ]]; then
  dir=$1
  shift
fi
nvcc=${CUDACXX:-/usr/local/cuda/bin/nvcc}
if [[ ! -x $nvcc ]]; then
  echo "cuda_build: no nvcc at $nvcc hint: install the CUDA toolkit in /usr/local/cuda or set CUDACXX" >&2
  exit 1
fi
launch=()
if command -v ccache >/dev/null; then
  launch=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
    -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
t0=$(date +%s)
cmake -S . -B "$dir" -DANYK_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$nvcc" \
  "${launch[@]}" "$@" >/dev/null
t1=$(date +%s)
read -r -a targets <<<"${CUDA_BUILD_TARGETS:-}"
if ((${#targets[@]})); then
  cmake --build "$dir" -j "${JOBS:-$(nproc)}" --target "${targets[@]}"
else
  cmake --build "$dir" -j "${JOBS:-$(nproc)}"
fi
t2=$(date +%s)
echo "cuda_build: $dir configured in $((t1 - t0)) s, built in $((t2 - t1)) s"
