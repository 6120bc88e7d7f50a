#!/usr/bin/env bash
# The GPU pack and check, end to end without a GPU (issue 21; docs/gpu.md, "The one-command GPU
# check"). Builds the pack with tools/gpu_pack.sh from BUILD_DIR (default build-cuda, built if
# needed), then, in a mount namespace (unshare -m, so root) where the system's OpenMPI, PMIx,
# hwloc, libevent, HDF5, Boost, the CUDA libraries and /usr/local/cuda are hidden (empty tmpfs
# over their folders, /dev/null over their files), runs from the pack alone, on the CPU:
#   hiding     the system mpirun and the unpacked build-cuda/anyk must fail to start there, and
#              ldd must resolve every packed ELF file inside the pack, except glibc, the driver's
#              libcuda and cuBLAS/cuBLASLt/NCCL, which a GPU machine's toolkit provides (here a
#              CUDA_HOME holding only those three files)
#   single     one `anyk train` without mpirun (OpenMPI's singleton MPI_Init starts orted from
#              $OPAL_PREFIX/bin), and the same in a copy of the pack with orted where it was before
#              issue 21 (bin/ only), which must fail: the check catches that layout
#   mpirun     `mpirun -np 2 --oversubscribe anyk train --ep 2`
#   suites     with ANYK_GPU_TEST_ON_CPU=1 (their CUDA side on the CPU): test_gpu_train's zero-row
#              case (1 and 2 ranks, through the suite's own mpirun), then the pack's
#              tools/gpu_check.sh running test_gpu_kernels, test_gpu_bf16_storage and
#              bench/gpu_bench.sh on a small CPU model, whose bench.json is indented over many
#              lines; summary.json must exist and parse, and those three checks pass (parity50 and
#              train, minutes of CPU on 2 cores, are left out)
#   fake GPU   a fake nvidia-smi that lists a GPU, with no driver and with a fake libcuda.so.1 that
#              reports CUDA 11.4 (too old for the build's runtime): gpu_check.sh must exit 1 with
#              the CUDA runtime's "driver version is insufficient" message, never a skip, and a
#              packed suite must fail (anyk's device_count) instead of skipping with exit 77
# Every step has a timeout; the script prints each step's start time and the total. Skipped with a
# message when /usr/local/cuda/bin/nvcc is absent (as .ci/run's CUDA build is). Usage:
#   tools/pack_test.sh        (as root; KEEP=1 keeps the work folder)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD_DIR:-build-cuda}
T0=$SECONDS
T0_EPOCH=$(date +%s)
if [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "pack_test: no CUDA toolkit in /usr/local/cuda: skipped"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "pack_test: needs root (unshare -m and bind mounts) hint: run it as root, as .ci/run does" >&2
  exit 1
fi
WORK=$(mktemp -d /tmp/pack_test.XXXXXX)
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$WORK"' EXIT; else echo "pack_test: work folder $WORK (kept)"; fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

echo "-- pack_test: pack ($((SECONDS - T0)) s)"
BUILD_DIR=$BUILD timeout 900 bash tools/gpu_pack.sh "$WORK/pack"
[ -x "$ROOT/$BUILD/anyk" ] || { echo "pack_test: FAILED: no $BUILD/anyk after gpu_pack.sh" >&2; exit 1; }

# The stand-ins, made outside the namespace: the big CUDA libraries the GPU machine's toolkit
# would provide (their names as the build links them), a fake nvidia-smi and a driver too old.
mkdir -p "$WORK/cuda/lib64" "$WORK/fakegpu" "$WORK/olddriver"
ldd "$ROOT/$BUILD/anyk" | awk '$1 ~ /^(libcublas|libcublasLt|libnccl)\.so/ {print $1, $3}' >"$WORK/toolkit_libs"
[ -s "$WORK/toolkit_libs" ] || { echo "pack_test: FAILED: ldd of $BUILD/anyk names no cuBLAS" >&2; exit 1; }
# NCCL is opened with dlopen by --comm nccl only (not in ldd), but a GPU machine's toolkit has it.
[ -e /usr/local/cuda/lib64/libnccl.so.2 ] && echo "libnccl.so.2 /usr/local/cuda/lib64/libnccl.so.2" >>"$WORK/toolkit_libs"
cat >"$WORK/fakegpu/nvidia-smi" <<'EOF'
#!/bin/sh
# tools/pack_test.sh's stand-in: lists one GPU, which CUDA cannot use.
if [ "${1:-}" = -L ]; then echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-pack-test)"; else echo "fake nvidia-smi: 1 GPU"; fi
EOF
chmod +x "$WORK/fakegpu/nvidia-smi"
cat >"$WORK/olddriver/fakecuda.c" <<'EOF'
/* tools/pack_test.sh's stand-in for a driver too old for the build's CUDA runtime: the runtime
   asks the driver's version first and stops with cudaErrorInsufficientDriver. */
int cuDriverGetVersion(int *v) { *v = 11040; return 0; }
int cuInit(unsigned flags) { (void)flags; return 0; }
EOF
gcc -shared -fPIC -o "$WORK/olddriver/libcuda.so.1" "$WORK/olddriver/fakecuda.c"
python3 - "$WORK/text.txt" <<'EOF'
import random, sys
r = random.Random(1)
w = ["expert", "router", "token", "layer", "gradient", "the", "of", "and", "mixture", "sparse"]
with open(sys.argv[1], "w") as f:
    for _ in range(4000): f.write(" ".join(r.choice(w) for _ in range(12)) + ".\n")
EOF

cat >"$WORK/inner.sh" <<'INNER'
set -euo pipefail
fail() { echo "pack_test: FAILED: $*" >&2; exit 1; }
step() { echo "-- pack_test: $* ($(($(date +%s) - T0)) s)"; }
PACK=$WORK/pack
LIBDIR=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

step "namespace: hide the system's OpenMPI, HDF5, Boost and CUDA"
while read -r name path; do  # bound before /usr/local is hidden; the binds stay visible
  : >"$WORK/cuda/lib64/$name"
  mount --bind "$(readlink -f "$path")" "$WORK/cuda/lib64/$name"
done <"$WORK/toolkit_libs"
hidden=0
for d in $(readlink -f /usr/local/cuda) /usr/local/cuda-* "$LIBDIR"/openmpi "$LIBDIR"/pmix* "$LIBDIR"/hdf5 \
  /usr/share/openmpi /etc/openmpi; do
  [ -d "$d" ] && ! mountpoint -q "$d" || continue
  mount -t tmpfs -o size=64k,mode=755 pack_test_hidden "$d"
  hidden=$((hidden + 1))
done
for f in $(find "$LIBDIR" -maxdepth 1 -type f \( -name 'libmpi*' -o -name 'libopen-*' -o -name 'libpmix*' \
  -o -name 'libhwloc*' -o -name 'libevent*' -o -name 'libhdf5*' -o -name 'libboost*' -o -name 'libsz*' \
  -o -name 'libaec*' -o -name 'libmca_common*' -o -name 'liboshmem*' -o -name 'libompitrace*' \
  -o -name 'libcuda*' -o -name 'libcublas*' -o -name 'libnccl*' \)) \
  $(for b in mpirun mpiexec orterun orted ompi_info oshrun; do readlink -f "/usr/bin/$b" 2>/dev/null; done | sort -u); do
  [ -f "$f" ] || continue
  mount --bind /dev/null "$f"
  hidden=$((hidden + 1))
done
echo "hid $hidden folders and files"
# The hiding holds: the system mpirun and the build's own anyk (linked against the system's
# libraries) cannot start, and the hidden folders are empty.
if out=$(timeout 20 /usr/bin/mpirun --version 2>&1); then fail "the system mpirun still runs in the namespace: $out"; fi
echo "system mpirun: $(echo "$out" | head -1)"
if out=$(timeout 20 env -u LD_LIBRARY_PATH "$ROOT/$BUILD/anyk" --help 2>&1); then
  fail "$BUILD/anyk (system libraries) still starts in the namespace"
fi
echo "$BUILD/anyk: $(echo "$out" | head -1)"
for d in "$LIBDIR/openmpi" /usr/local/cuda/; do
  [ -z "$(ls -A "$d" 2>/dev/null)" ] || fail "$d is not hidden: $(ls -A "$d" | head -3 | tr '\n' ' ')"
done

export CUDA_HOME=$WORK/cuda
# shellcheck disable=SC1091
source "$PACK/env.sh"
step "ldd: every packed ELF file resolves inside the pack (or glibc, libcuda, the toolkit's three)"
glibc='^(linux-vdso|ld-linux|libc|libm|libpthread|libdl|librt|libresolv|libutil)\.so'
n=0
while read -r f; do
  n=$((n + 1))
  deps=$(ldd "$f" 2>&1) || fail "ldd $f: $(echo "$deps" | grep -v '=>' | head -1)"
  while read -r lib path; do
    if [ "$path" = not ]; then
      [[ $lib == libcuda.so* ]] || fail "$f needs $lib, which nothing in the namespace provides"
    elif [[ $path != "$PACK"/* && $path != "$CUDA_HOME"/* && ! $lib =~ $glibc ]]; then
      fail "$f loads $lib from $path, outside the pack"
    fi
  done < <(echo "$deps" | awk '/=>/ {print $1, $3}')
done < <(find "$PACK" -type f \( -name '*.so*' -o -perm -u+x \) -exec sh -c 'file -b "$1" | grep -q ELF' _ {} \; -print)
echo "checked $n ELF files"

step "prepare (packed anyk)"
timeout 60 anyk prepare --input "$WORK/text.txt" --out "$WORK/data" --val-fraction 0.1 >/dev/null
# The checks gpu_check.sh runs here. parity50 and train are left out: their quickstart-size runs
# (--threads 4, 50 steps, several runs each) take minutes on a 2-core machine; the zero-row case
# above runs test_gpu_train from the pack instead, 1 and 2 ranks.
CHECKS="kernels bf16 bench"
TRAIN="--data $WORK/data --layers 2 --dim 32 --heads 2 --experts 4 --expert-hidden 32 --seq-len 32 --batch 4
  --steps 4 --log-every 1 --eval-every 0 --eval-windows 2 --k-strategy layer --k-min 1 --k-max 2 --threads 1"
trained() {  # run-dir: the 4th step was logged and the model saved
  grep -Eq '"step": ?4,' "$1/metrics.jsonl" 2>/dev/null && [ -s "$1/model.h5" ]
}

step "single process: anyk train without mpirun (singleton MPI_Init)"
# shellcheck disable=SC2086
timeout 120 anyk train $TRAIN --run-dir "$WORK/single" >"$WORK/single.log" 2>&1 ||
  fail "single-process anyk train: $(tail -3 "$WORK/single.log")"
trained "$WORK/single" || fail "single-process anyk train did not log step 4 and save: $(tail -3 "$WORK/single.log")"
tail -1 "$WORK/single.log"

step "the same with orted only in bin/ (the layout before issue 21) must fail"
cp -al "$PACK" "$WORK/oldlayout"
rm "$WORK/oldlayout/bin/orted"
mv "$WORK/oldlayout/usr/bin/orted" "$WORK/oldlayout/bin/orted"
# shellcheck disable=SC2086
if (source "$WORK/oldlayout/env.sh" && timeout 60 anyk train $TRAIN --run-dir "$WORK/oldlayout_run") >"$WORK/oldlayout.log" 2>&1; then
  fail "anyk train ran without \$OPAL_PREFIX/bin/orted: the single-process check would not catch the old layout"
fi
echo "old layout: $(grep -m1 -iE 'orted|error|abort' "$WORK/oldlayout.log" || tail -1 "$WORK/oldlayout.log")"
rm -rf "$WORK/oldlayout"

step "mpirun -np 2 (packed mpirun)"
# shellcheck disable=SC2086
timeout 120 mpirun -np 2 --oversubscribe anyk train $TRAIN --ep 2 --run-dir "$WORK/np2" >"$WORK/np2.log" 2>&1 ||
  fail "mpirun -np 2 anyk train: $(tail -3 "$WORK/np2.log")"
trained "$WORK/np2" || fail "mpirun -np 2 anyk train did not log step 4 and save: $(tail -3 "$WORK/np2.log")"
grep -m1 '^layout' "$WORK/np2.log" || true

step "test_gpu_train on the CPU: zero-row experts at 1 and 2 ranks (the suite's packed mpirun)"
ANYK_GPU_TEST_ON_CPU=1 timeout 180 "$PACK/bin/test_gpu_train" "--test-case=*zero rows*" >"$WORK/zero_rows.out" 2>&1 ||
  fail "test_gpu_train --test-case='*zero rows*' on the CPU: $(tail -5 "$WORK/zero_rows.out")"
grep -m1 'test cases:' "$WORK/zero_rows.out"

step "gpu_check.sh from the pack: kernels and bf16 suites on the CPU, bench on a small CPU model"
rc=0
GPU_CHECK_ONLY="$CHECKS" ANYK_GPU_TEST_ON_CPU=1 BENCH_NO_GPU=1 BENCH_DEVICE_FLAGS="--device cpu" BENCH_SHAPE="2 64 2 4 64 64" \
  STEPS=3 WARMUP=1 XGEMM_STEPS=2 XGEMM_WARMUP=1 BATCHES=2 RUN_TIMEOUT=60 \
  timeout 420 bash "$PACK/tools/gpu_check.sh" "$WORK/check" || rc=$?
python3 - "$WORK/check" "$rc" "$CHECKS" <<'EOF' || fail "gpu_check.sh on the CPU (log: $WORK/check/gpu_check.log)"
import json, os, sys
out, rc, selected = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
s = json.load(open(f"{out}/summary.json"))  # exists and parses
st = {c["name"]: c["status"] for c in s["checks"]}
bench_lines = sum(1 for _ in open(f"{out}/bench.json"))
bench = next(c for c in s["checks"] if c["name"] == "bench")["figures"]
problems = [f"{n}: {st.get(n)}, not pass" for n in selected if st.get(n) != "pass"]
problems += [f"{n}: {st.get(n)}, not skip" for n in ("kernels", "bf16", "parity50", "train", "bench", "memcheck")
             if n not in selected and st.get(n) != "skip"]
if rc != 0: problems.append(f"exit code {rc}")
if bench_lines < 2: problems.append(f"bench.json has {bench_lines} line(s): the multi-line record path was not exercised")
if len(bench.get("runs", [])) != 2: problems.append(f"bench figures hold {len(bench.get('runs', []))} runs, not 2")
if os.path.exists(f"{out}/checks.jsonl"): problems.append("checks.jsonl left behind")
print(f"summary.json: {len(s['checks'])} checks, {st}; bench.json {bench_lines} lines; mode {s['mode']}")
sys.exit("; ".join(problems) or 0)
EOF

step "fake GPU: nvidia-smi lists one, CUDA has no driver / a driver too old"
for variant in none old; do
  ld=${LD_LIBRARY_PATH:-}
  [ $variant = old ] && ld=$WORK/olddriver:$ld
  rc=0
  PATH=$WORK/fakegpu:$PATH LD_LIBRARY_PATH=$ld timeout 60 bash "$PACK/tools/gpu_check.sh" "$WORK/fake_$variant" \
    >"$WORK/fake_$variant.out" 2>&1 || rc=$?
  grep -q "CUDA driver version is insufficient for CUDA runtime version" "$WORK/fake_$variant.out" ||
    fail "driver $variant: gpu_check.sh did not report the CUDA runtime's error: $(tail -3 "$WORK/fake_$variant.out")"
  [ $rc = 1 ] || fail "driver $variant: gpu_check.sh exited $rc, not 1"
  ! grep -q '"status": "skip"' "$WORK/fake_$variant/summary.json" || fail "driver $variant: a check was skipped"
  echo "driver $variant: exit $rc, $(grep -m1 'CUDA: ' "$WORK/fake_$variant.out")"
done
rc=0
LD_LIBRARY_PATH=$WORK/olddriver:$LD_LIBRARY_PATH timeout 60 "$PACK/bin/test_gpu_kernels" >"$WORK/old_kernels.out" 2>&1 || rc=$?
[ $rc != 0 ] && [ $rc != 77 ] && grep -q "CUDA driver version is insufficient" "$WORK/old_kernels.out" ||
  fail "test_gpu_kernels with a driver too old: exit $rc, not a failure naming the driver: $(tail -2 "$WORK/old_kernels.out")"
echo "test_gpu_kernels, driver too old: exit $rc, $(grep -m1 -o 'CUDA cannot use.*runtime version' "$WORK/old_kernels.out")"
INNER

echo "-- pack_test: into the namespace ($((SECONDS - T0)) s)"
export WORK ROOT BUILD
T0=$T0_EPOCH timeout 900 unshare -m --propagation private bash "$WORK/inner.sh"
echo "pack_test: passed in $((SECONDS - T0)) s"
