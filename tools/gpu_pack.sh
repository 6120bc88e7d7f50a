#!/usr/bin/env bash
# Build-machine half of the GPU check (docs/gpu.md): packs what tools/gpu_check.sh needs on a GPU
# machine that has only the CUDA toolkit, CMake and Python into DIR (default gpu_pack/):
#   DIR/bin   anyk, the gpu-label test executables, gemm_peak, and links to mpirun and orted
#   DIR/lib   the anyk shared libraries and every non-system library they need (from ldd), stripped
#   DIR/usr   OpenMPI's mpirun (orterun) and orted in usr/bin, its and PMIx's plugin folders and help
#             files at their Debian paths under /usr (OPAL_PREFIX=DIR/usr relocates them: a
#             singleton MPI_Init, an anyk started without mpirun, starts $OPAL_PREFIX/bin/orted)
#   DIR/tools/gpu_check.sh, DIR/tools/hf_check.py, DIR/bench/gpu_bench.sh, DIR/bench/gemm_peak.cu  the check itself
#             (DIR/tools/gpu_check.sh OUT_DIR runs from the pack alone, no repository needed)
#   DIR/env.sh  the environment (sourced by gpu_check.sh)
# Not packed: glibc (the GPU machine needs glibc >= this machine's), the NVIDIA driver (libcuda),
# cuBLAS/cuBLASLt/NCCL (hundreds of MiB; the GPU machine's CUDA toolkit must provide the same
# major version as the build's). libcudart is packed (0.7 MiB) so its version matches the build.
# Usage: tools/gpu_pack.sh [DIR]   (BUILD_DIR=build-cuda by default; built with tools/cuda_build.sh
# when it holds no anyk). The total must stay under 64 MiB; the script fails if it does not.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-gpu_pack}
BUILD=${BUILD_DIR:-build-cuda}
LIMIT_MIB=${PACK_LIMIT_MIB:-64}

if [ ! -x "$BUILD/anyk" ]; then
  if [ -x tools/cuda_build.sh ]; then
    bash tools/cuda_build.sh "$BUILD"
  else
    echo "gpu_pack: $BUILD/anyk does not exist and tools/cuda_build.sh is missing. hint: build with -DANYK_CUDA=ON into $BUILD" >&2
    exit 1
  fi
fi
cmake --build "$BUILD" -j "$(nproc)" --target anyk test_gpu_kernels test_gpu_train test_gpu_bf16_storage >/dev/null
cmake --build "$BUILD" --target gemm_peak >/dev/null 2>&1 || true  # only in CUDA builds

rm -rf "$DIR"
mkdir -p "$DIR/bin" "$DIR/lib" "$DIR/usr/bin" "$DIR/tools" "$DIR/bench"
MULTI=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
OMPI_LIBDIR=/usr/lib/$MULTI/openmpi/lib
OMPI_PLUGINS=$(ls -d "$OMPI_LIBDIR"/openmpi* 2>/dev/null | head -1)
PMIX_DIR=$(ls -d /usr/lib/"$MULTI"/pmix* 2>/dev/null | head -1)

# Executables and plugin folders.
cp "$BUILD/anyk" "$BUILD"/tests/test_gpu_* "$DIR/bin/"
[ -x "$BUILD/gemm_peak" ] && cp "$BUILD/gemm_peak" "$DIR/bin/"
# OpenMPI's executables where OPAL_PREFIX=DIR/usr makes it look for them, linked from bin/ (PATH).
cp "$(readlink -f "$(command -v mpirun)")" "$DIR/usr/bin/mpirun"
if ! command -v orted >/dev/null; then
  echo "gpu_pack: OpenMPI's orted is not on PATH; an anyk started without mpirun needs it. hint: apt-get install openmpi-bin" >&2
  exit 1
fi
cp "$(readlink -f "$(command -v orted)")" "$DIR/usr/bin/orted"
ln -s ../usr/bin/mpirun "$DIR/bin/mpirun"
ln -s ../usr/bin/orted "$DIR/bin/orted"
# The check's scripts, at the same paths relative to the pack as to the repository root.
cp tools/gpu_check.sh tools/hf_check.py "$DIR/tools/"
cp bench/gpu_bench.sh bench/gemm_peak.cu "$DIR/bench/"
mirror() {  # copies a system path to DIR at the same path
  [ -e "$1" ] || return 0
  mkdir -p "$DIR$(dirname "$1")"
  cp -a "$1" "$DIR$(dirname "$1")/"
}
mirror "$OMPI_PLUGINS"
mirror /usr/share/openmpi
[ -n "$PMIX_DIR" ] && mirror "$PMIX_DIR"
cp -a "$BUILD"/*.so "$DIR/lib/"
# Only shared memory and TCP are used (one node): drop the network and OpenSHMEM plugins, whose
# libraries (UCX, libfabric, verbs, PSM) are large, and PMIx's static library and headers.
find "$DIR/usr" \( -name 'mca_*ucx*' -o -name 'mca_*ofi*' -o -name 'mca_*psm*' -o -name 'mca_*openib*' \
  -o -name 'mca_*verbs*' -o -name 'mca_*portals*' -o -name 'mca_spml_*' -o -name 'mca_sshmem_*' \
  -o -name 'mca_atomic_*' -o -name 'mca_scoll_*' -o -name '*.a' -o -name '*.la' \) -delete
rm -rf "$DIR$PMIX_DIR/include" "$DIR$PMIX_DIR"/lib/libpmix.so*

# Every library the ELF files need, minus glibc, the driver and the big CUDA libraries.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libresolv|libutil\.so|libcuda\.so|libcublas|libcublasLt|libnccl)'
elves=$(find "$DIR" -type f \( -perm -u+x -o -name '*.so*' \) -exec sh -c 'file -b "$1" | grep -q ELF' _ {} \; -print)
for f in $elves; do
  ldd "$f" 2>/dev/null | awk '/=>/ {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ "$name" =~ $skip ]]; then continue; fi
  if [ "$path" = "not" ]; then echo "gpu_pack: warning: $name (needed by a packed file) is not found here" >&2; continue; fi
  [ -e "$DIR/lib/$name" ] || cp -L "$path" "$DIR/lib/$name"
done
# Libraries the OpenMPI libraries themselves link (libmpi's own folder holds its helpers).
cp -an "$OMPI_LIBDIR"/libmca_common_sm.so* "$DIR/lib/" 2>/dev/null || true

find "$DIR" -type f \( -name '*.so*' -o -perm -u+x \) -exec sh -c 'file -b "$1" | grep -q "ELF.*not stripped"' _ {} \; \
  -exec strip --strip-unneeded {} \; 2>/dev/null || true

cat >"$DIR/env.sh" <<EOF
# Sourced by tools/gpu_check.sh: run the packed anyk and OpenMPI from this folder.
PACK=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)
CUDA_HOME=\${CUDA_HOME:-/usr/local/cuda}
export PATH="\$PACK/bin:\$CUDA_HOME/bin:\$PATH"
export LD_LIBRARY_PATH="\$PACK/lib:\$CUDA_HOME/lib64:\${LD_LIBRARY_PATH:-}"
# cuBLAS 13 and NCCL 2 are not packed (too large): take the toolkit's, else the ones a pip-installed
# PyTorch brings (site-packages/nvidia/*/lib), else say which one is missing.
for want in libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
  [ -e "\$CUDA_HOME/lib64/\$want" ] && continue
  found=""
  for sp in \$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    found=\$(find "\$sp/nvidia" -maxdepth 4 -name "\$want" 2>/dev/null | head -1) || true
    [ -n "\$found" ] && break
  done
  if [ -n "\$found" ]; then
    export LD_LIBRARY_PATH="\$LD_LIBRARY_PATH:\$(dirname "\$found")"
  else
    note=""; [ "\$want" = libnccl.so.2 ] && note=" (only --comm nccl needs it)"
    echo "gpu_pack env: \$want not found in \$CUDA_HOME/lib64 nor in Python's nvidia packages\$note" >&2
  fi
done
export OPAL_PREFIX="\$PACK/usr"
export OMPI_MCA_mca_base_component_path="\$PACK$OMPI_PLUGINS"
export PMIX_MCA_mca_base_component_path="\$PACK${PMIX_DIR:+$PMIX_DIR/lib/pmix}"
export PMIX_INSTALL_PREFIX="\$PACK${PMIX_DIR}"
export OMPI_MCA_orte_launch_agent="\$PACK/usr/bin/orted"
export OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 OMPI_MCA_mtl=^ofi,psm2 OMPI_MCA_osc=^ucx
# Shared memory without CMA (process_vm_readv), which containers usually forbid.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_plm_rsh_agent=false
export ANYK_BIN="\$PACK/bin/anyk" ANYK_MPIEXEC="\$PACK/bin/mpirun"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
EOF

echo "gpu_pack: $DIR"
du -sh "$DIR/bin" "$DIR/lib" "$DIR/usr" | sed 's/^/  /'
total=$(du -sm "$DIR" | cut -f1)
echo "  total ${total} MiB (limit ${LIMIT_MIB} MiB), $(find "$DIR" -type f | wc -l) files"
if [ "$total" -gt "$LIMIT_MIB" ]; then
  echo "gpu_pack: $DIR is ${total} MiB, over ${LIMIT_MIB} MiB. hint: the largest files are:" >&2
  find "$DIR" -type f -printf '%s %p\n' | sort -rn | head -10 >&2
  exit 1
fi
