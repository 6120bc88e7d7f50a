#!/usr/bin/env bash
# GPU-machine half of the GPU check (docs/gpu.md): run from the repository root on a machine with
# an NVIDIA GPU, the CUDA toolkit, CMake and Python, with the folder made by tools/gpu_pack.sh
# present (GPU_PACK, default gpu_pack/; without it, an existing build-cuda/ is used). Runs, each
# with a timeout and all within BUDGET_S (default 480 s = 8 minutes):
#   kernels    test_gpu_kernels: every kernel table entry, CUDA against CPU
#   bf16       test_gpu_bf16_storage: bf16 activation storage per op, against the GPU's f32 path and the CPU
#   parity50   test_gpu_train, the 50-step f32 (and bf16, against CPU f32 and CPU bf16 storage) run
#   train      test_gpu_train, the rest: 2 ranks on one GPU, NCCL, zero-row experts, checkpoints
#   bench      bench/gpu_bench.sh: bf16 MoE tokens/s and MFU, layer K in [1,4] vs fixed K=2, and
#              fixed K=2 per expert GEMM strategy (loop, streams, grouped)
#   memcheck   test_gpu_kernels under compute-sanitizer, if installed and time is left
# and writes OUT_DIR/summary.json (per check: name, status pass/fail/skip, seconds, figures) and
# OUT_DIR/gpu_check.log. Without a visible GPU every check is reported "skip: no CUDA device
# visible" within seconds (the dry mode, usable on any machine).
# Usage: tools/gpu_check.sh OUT_DIR
set -uo pipefail
OUT=${1:?usage: tools/gpu_check.sh OUT_DIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
LOG=$OUT/gpu_check.log
: >"$LOG"
: >"$OUT/checks.jsonl"
BUDGET_S=${BUDGET_S:-480}
START=$SECONDS
PACK=${GPU_PACK:-gpu_pack}
say() { echo "$*" | tee -a "$LOG"; }

# Where the binaries are: the pack (its env.sh sets PATH, LD_LIBRARY_PATH, OPAL_PREFIX, ANYK_BIN,
# ANYK_MPIEXEC), else build-cuda.
BIN=""
if [ -f "$PACK/env.sh" ]; then
  # shellcheck disable=SC1091
  source "$PACK/env.sh"
  BIN=$PACK/bin
elif [ -x build-cuda/anyk ]; then
  BIN=build-cuda/tests
  export ANYK_BIN=$ROOT/build-cuda/anyk ANYK_MPIEXEC=${ANYK_MPIEXEC:-$(command -v mpirun || echo mpirun)}
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export GEMM_PEAK=${GEMM_PEAK:-$ROOT/build-cuda/gemm_peak}
fi
export ANYK_SOURCE_DIR=$ROOT

say "== gpu_check $(date -u +%FT%TZ) on $(hostname), binaries: ${BIN:-none}"
GPU=1
if nvidia-smi >>"$LOG" 2>&1; then
  nvidia-smi -L | tee -a "$LOG"
else
  GPU=0
  say "nvidia-smi: no GPU visible"
fi

record() {  # name "status[: reason]" seconds figures-json
  local status=${2%%:*} reason=""
  [ "$status" != "$2" ] && reason=${2#*: }
  printf '{"name": "%s", "status": "%s", "reason": "%s", "seconds": %s, "figures": %s}\n' "$1" "$status" "$reason" "$3" \
    "${4:-{\}}" >>"$OUT/checks.jsonl"
  say "-- $1: $2 (${3}s)"
}

# Figures from a doctest run's output: test case counts and the suite's MESSAGE lines of losses.
figures_of() {
  python3 - "$1" <<'EOF'
import json, re, sys
t = open(sys.argv[1], errors="replace").read()
f = {}
m = re.search(r"test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed", t)
if m: f.update(cases=int(m[1]), passed=int(m[2]), failed=int(m[3]))
m = re.search(r"assertions:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed", t)
if m: f.update(assertions=int(m[1]), assertions_failed=int(m[3]))
f["loss_diffs"] = re.findall(r"(\S+ vs \S+): largest relative loss difference (\S+)", t)
m = re.search(r"CUDA device \d+: (.*)", t)
if m: f["device"] = m[1]
print(json.dumps(f))
EOF
}

# Runs one check with min(its timeout, what is left of the budget); exit 77 = skip.
check() {  # name timeout command...
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then record "$name" "skip: out of the ${BUDGET_S}s budget" 0; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "== $name (timeout ${limit}s): $*"
  local t0=$SECONDS out=$OUT/$name.out
  timeout -k 10 "$limit" "$@" >"$out" 2>&1
  local rc=$? dt=$((SECONDS - t0))
  cat "$out" >>"$LOG"
  local status=fail
  if [ $rc = 0 ]; then status=pass; elif [ $rc = 77 ]; then status="skip: no CUDA device visible"; elif [ $rc = 124 ] || [ $rc = 137 ]; then status="fail: timed out after ${limit}s"; fi
  local fig
  if [ "$name" = bench ] && [ -f "$OUT/bench.json" ]; then fig=$(cat "$OUT/bench.json"); else fig=$(figures_of "$out"); fi
  record "$name" "$status" "$dt" "$fig"
}

NAMES="kernels bf16 parity50 train bench memcheck"
if [ "$GPU" = 0 ] && [ -z "$BIN" ]; then
  for n in $NAMES; do record "$n" "skip: no CUDA device visible" 0; done
else
  if [ -n "$BIN" ] && ldd "$ANYK_BIN" 2>/dev/null | grep -q "not found"; then
    say "missing libraries (the GPU machine needs the CUDA toolkit of the build's major version):"
    ldd "$ANYK_BIN" | grep "not found" | tee -a "$LOG"
  fi
  check kernels 90 "$BIN/test_gpu_kernels"
  check bf16 60 "$BIN/test_gpu_bf16_storage"
  check parity50 150 "$BIN/test_gpu_train" "--test-case=*50 steps*"
  check train 180 "$BIN/test_gpu_train" "--test-case-exclude=*50 steps*"
  check bench 300 bash bench/gpu_bench.sh "$OUT/bench.json"  # 4 training runs (2 short); capped by the budget
  if [ "$GPU" = 1 ] && command -v compute-sanitizer >/dev/null; then
    check memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 1 "$BIN/test_gpu_kernels"
  elif [ "$GPU" = 0 ]; then
    record memcheck "skip: no CUDA device visible" 0
  else
    record memcheck "skip: compute-sanitizer not installed" 0
  fi
fi

python3 - "$OUT" "$((SECONDS - START))" <<'EOF'
import json, sys
out, secs = sys.argv[1], int(sys.argv[2])
checks = [json.loads(l) for l in open(f"{out}/checks.jsonl")]
json.dump({"checks": checks, "seconds": secs}, open(f"{out}/summary.json", "w"), indent=1)
EOF
rm -f "$OUT/checks.jsonl"
say "== done in $((SECONDS - START))s: $OUT/summary.json"
python3 -c "
import json; s = json.load(open('$OUT/summary.json'))
for c in s['checks']:
    st = c['status'] + (': ' + c['reason'] if c['reason'] else '')
    print(f\"  {c['name']:9s} {st:45s} {c['seconds']:4d}s\")
" | tee -a "$LOG"
