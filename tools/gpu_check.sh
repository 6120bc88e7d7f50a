#!/usr/bin/env bash
# GPU-machine half of the GPU check (docs/gpu.md): run on a machine with an NVIDIA GPU, the CUDA
# toolkit and Python, either from the folder made by tools/gpu_pack.sh (DIR/tools/gpu_check.sh,
# which needs nothing else) or from the repository root with that folder present (GPU_PACK,
# default gpu_pack/; without it, an existing build-cuda/ is used). Runs, each with a timeout, in a
# session of its own whose every process is killed when it ends, and all within BUDGET_S (default
# 480 s = 8 minutes):
#   kernels    test_gpu_kernels: every kernel table entry, CUDA against CPU
#   bf16       test_gpu_bf16_storage: bf16 activation storage per op, against the GPU's f32 path and the CPU
#   parity50   test_gpu_train, the 50-step f32 (and bf16, against CPU f32 and CPU bf16 storage) run
#   train      test_gpu_train, the rest: 2 ranks on one GPU, NCCL, zero-row experts, checkpoints
#   bench      bench/gpu_bench.sh: bf16 MoE tokens/s and MFU, layer K in [1,4] vs fixed K=2, and
#              fixed K=2 per expert GEMM strategy (loop, streams, grouped)
#   hf         tools/hf_check.py: transformers' MixtralForCausalLM on the CPU against anyk's logits
#              (K = 1, 2; <= 1e-4) for a tiny model exported with anyk convert --to hf; "skip" where
#              torch or transformers is not installed
#   memcheck   test_gpu_kernels under compute-sanitizer, if installed and at least MEMCHECK_MIN_S
#              (default 60) of the budget is left; not finishing in time is "not run (time)", not a failure
# and writes OUT_DIR/summary.json (mode; per check: name, status pass/fail/skip, reason, seconds,
# figures) and OUT_DIR/gpu_check.log. Exits 1 when a check failed or the summary could not be
# written (the raw records then stay in OUT_DIR/checks.jsonl), else 0.
# When nvidia-smi lists a GPU, CUDA must see it too: if the CUDA runtime anyk loads fails (a driver
# too old for it, no libcuda), every check fails with the runtime's message; it is never a skip.
# Without a GPU every check is reported "skip: no CUDA device visible" within seconds (the dry
# mode, usable on any machine); with ANYK_GPU_TEST_ON_CPU=1 the suites run their CUDA side on the
# CPU instead (a check of the harness, and of this script: tools/pack_test.sh runs it so in CI).
# GPU_CHECK_ONLY="kernels bench" runs only the checks named (the others are recorded as skipped).
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
MEMCHECK_MIN_S=${MEMCHECK_MIN_S:-60}
START=$SECONDS
if [ -n "${GPU_PACK:-}" ]; then
  PACK=$GPU_PACK
elif [ -f "$ROOT/env.sh" ] && [ -x "$ROOT/bin/anyk" ]; then
  PACK=$ROOT  # this script is the pack's own copy (DIR/tools/gpu_check.sh)
else
  PACK=gpu_pack
fi
say() { echo "$*" | tee -a "$LOG"; }
NAMES="kernels bf16 parity50 train hf bench memcheck"
for n in ${GPU_CHECK_ONLY:-}; do
  if [[ " $NAMES " != *" $n "* ]]; then
    say "gpu_check: GPU_CHECK_ONLY names '$n', which is not a check; the checks are: $NAMES"
    exit 2
  fi
done
selected() { [ -z "${GPU_CHECK_ONLY:-}" ] || [[ " $GPU_CHECK_ONLY " == *" $1 "* ]]; }

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
  MODE=gpu
else
  GPU=0
  say "nvidia-smi: no GPU visible"
  MODE="dry (no GPU visible)"
  [ -n "${ANYK_GPU_TEST_ON_CPU:-}" ] && MODE="cpu (ANYK_GPU_TEST_ON_CPU: the CUDA side runs on the CPU)"
fi
say "mode: $MODE"

# One compact JSON line per check in checks.jsonl, whatever the figures' layout (bench.json is
# indented); figures that do not parse are kept as a string.
record() {  # name "status[: reason]" seconds [figures-json]
  local status=${2%%:*} reason=""
  [ "$status" != "$2" ] && reason=${2#*: }
  python3 - "$1" "$status" "$reason" "$3" "${4:-}" >>"$OUT/checks.jsonl" <<'EOF' || say "gpu_check: could not record $1"
import json, sys
name, status, reason, secs, fig = sys.argv[1:]
try:
    fig = json.loads(fig) if fig.strip() else {}
except ValueError as e:
    fig = {"unparsed": fig[:4000], "error": str(e)}
print(json.dumps({"name": name, "status": status, "reason": reason, "seconds": int(secs), "figures": fig}))
EOF
  say "-- $1: $2 (${3}s)"
}

# What the CUDA runtime that anyk loads says about this machine's GPUs ("N device(s) ..." and
# status 0, or its error name and message): the libcudart ldd resolves for anyk, through ctypes.
cuda_probe() {
  local rt
  rt=$(ldd "${ANYK_BIN:-/nonexistent}" 2>/dev/null | awk '$1 ~ /^libcudart/ && $3 ~ /^\// {print $3; exit}')
  if [ -z "$rt" ]; then
    echo "no libcudart found for ${ANYK_BIN:-anyk} (ldd); is this a CUDA build?"
    return 1
  fi
  python3 - "$rt" <<'EOF'
import ctypes, sys
try:
    rt = ctypes.CDLL(sys.argv[1])
except OSError as e:
    sys.exit(print(f"cannot load {sys.argv[1]}: {e}") or 1)
n, drv, run = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
err = rt.cudaGetDeviceCount(ctypes.byref(n))
rt.cudaDriverGetVersion(ctypes.byref(drv))
rt.cudaRuntimeGetVersion(ctypes.byref(run))
rt.cudaGetErrorName.restype = rt.cudaGetErrorString.restype = ctypes.c_char_p
ver = lambda v: f"{v // 1000}.{v % 1000 // 10}" if v else "none (no libcuda loaded)"
versions = f"NVIDIA driver supports CUDA {ver(drv.value)}, CUDA runtime {ver(run.value)}"
if err == 0 and n.value > 0:
    sys.exit(print(f"{n.value} CUDA device(s); {versions}") or 0)
what = f"{rt.cudaGetErrorName(err).decode()}: {rt.cudaGetErrorString(err).decode()}" if err else "0 devices"
sys.exit(print(f"cudaGetDeviceCount: {what} ({versions})") or 1)
EOF
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

# Kills every process left in session $1 (SIGKILL) and waits up to 10 s for them to go.
SESSION=""
kill_session() {
  local sid=$1
  [[ $sid =~ ^[0-9]+$ ]] && [ "$sid" -gt 1 ] || return 0
  pkill -KILL -s "$sid" 2>/dev/null
  for _ in $(seq 50); do pgrep -s "$sid" >/dev/null || return 0; sleep 0.2; done
  say "gpu_check: processes of session $sid outlived SIGKILL: $(pgrep -s "$sid" | tr '\n' ' ')"
}
trap 'kill_session "$SESSION"; exit 130' INT TERM HUP

# Runs command... in a new session under `timeout limit`, then kills whatever is left of the
# session: timeout only signals its own process group, and test_gpu_train starts each anyk (and
# mpirun) in a process group of its own, so they would outlive it and hold the GPU.
run_in_session() {  # limit command...
  local limit=$1 sidfile=$OUT/.session
  shift
  rm -f "$sidfile"
  # The shell exec'd by setsid leads the new session: its pid ($$) is the session id.
  setsid --wait bash -c 'echo $$ >"$0"; exec timeout -k 10 "$@"' "$sidfile" "$limit" "$@" &
  local pid=$!
  for _ in $(seq 50); do [ -s "$sidfile" ] && break; sleep 0.1; done
  SESSION=$(cat "$sidfile" 2>/dev/null)
  wait "$pid"
  local rc=$?
  kill_session "$SESSION"
  SESSION=""
  return $rc
}

# Runs one check with min(its timeout, what is left of the budget); exit 77 = skip (a failure when
# nvidia-smi lists a GPU). ON_TIMEOUT="skip: REASON" reports a timeout so instead of a failure.
check() {  # name timeout command...
  local name=$1 limit=$2
  shift 2
  if ! selected "$name"; then record "$name" "skip: not selected (GPU_CHECK_ONLY=$GPU_CHECK_ONLY)" 0; return; fi
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then record "$name" "skip: out of the ${BUDGET_S}s budget" 0; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "== $name (timeout ${limit}s): $*"
  local t0=$SECONDS out=$OUT/$name.out
  run_in_session "$limit" "$@" >"$out" 2>&1
  local rc=$? dt=$((SECONDS - t0))
  cat "$out" >>"$LOG"
  local status=fail
  if [ $rc = 0 ]; then
    status=pass
  elif [ $rc = 77 ] && [ "$GPU" = 0 ]; then
    status="skip: no CUDA device visible"
  elif [ $rc = 77 ]; then
    status="fail: nvidia-smi lists a GPU but the check saw no CUDA device"
  elif [ $rc = 124 ] || [ $rc = 137 ]; then
    status=${ON_TIMEOUT:-"fail: timed out after ${limit}s"}
  else
    status="fail: exit code $rc, last line: $(grep -v '^[[:space:]]*$' "$out" | tail -1 | cut -c1-200)"
  fi
  local fig
  if [ "$name" = bench ] && [ -f "$OUT/bench.json" ]; then fig=$(cat "$OUT/bench.json"); else fig=$(figures_of "$out"); fi
  record "$name" "$status" "$dt" "$fig"
}

probe=""
if [ "$GPU" = 1 ] && [ -n "$BIN" ]; then
  probe=$(cuda_probe)
  probe_rc=$?
  say "CUDA: $probe"
fi
if [ -z "$BIN" ]; then
  why="no binaries: neither $PACK/env.sh nor build-cuda/anyk exists (hint: make the pack with tools/gpu_pack.sh)"
  if [ "$GPU" = 1 ]; then
    for n in $NAMES; do record "$n" "fail: $why" 0; done
  else
    for n in $NAMES; do record "$n" "skip: no CUDA device visible" 0; done
  fi
elif [ "$GPU" = 1 ] && [ "$probe_rc" != 0 ]; then
  say "gpu_check: FAILED: nvidia-smi lists a GPU but CUDA cannot use it: $probe"
  for n in $NAMES; do record "$n" "fail: nvidia-smi lists a GPU but CUDA cannot use it: $probe" 0; done
else
  if [ -n "$BIN" ] && ldd "$ANYK_BIN" 2>/dev/null | grep -q "not found"; then
    say "missing libraries (the GPU machine needs the CUDA toolkit of the build's major version):"
    ldd "$ANYK_BIN" | grep "not found" | tee -a "$LOG"
  fi
  check kernels 90 "$BIN/test_gpu_kernels"
  check bf16 60 "$BIN/test_gpu_bf16_storage"
  check parity50 150 "$BIN/test_gpu_train" "--test-case=*50 steps*"
  check train 180 "$BIN/test_gpu_train" "--test-case-exclude=*50 steps*"
  if ! selected hf; then
    record hf "skip: not selected (GPU_CHECK_ONLY=$GPU_CHECK_ONLY)" 0
  elif ! python3 -c "import torch, transformers" 2>/dev/null; then
    record hf "skip: transformers not installed (pip install torch transformers)" 0
  else
    check hf 120 python3 tools/hf_check.py
  fi
  check bench 300 bash bench/gpu_bench.sh "$OUT/bench.json"  # 4 training runs (2 short); capped by the budget
  left=$((BUDGET_S - (SECONDS - START)))
  if ! selected memcheck; then
    record memcheck "skip: not selected (GPU_CHECK_ONLY=$GPU_CHECK_ONLY)" 0
  elif [ "$GPU" = 1 ] && command -v compute-sanitizer >/dev/null && [ "$left" -lt "$MEMCHECK_MIN_S" ]; then
    record memcheck "skip: not run (time): ${left}s of the ${BUDGET_S}s budget left, memcheck needs ${MEMCHECK_MIN_S}s" 0
  elif [ "$GPU" = 1 ] && command -v compute-sanitizer >/dev/null; then
    ON_TIMEOUT="skip: not run (time): compute-sanitizer did not finish within the time left" \
      check memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 1 "$BIN/test_gpu_kernels"
  elif [ "$GPU" = 0 ]; then
    record memcheck "skip: no CUDA device visible" 0
  else
    record memcheck "skip: compute-sanitizer not installed" 0
  fi
fi

# The summary: a record that does not parse becomes a failed check (its text kept), so nothing is
# lost; summary.json is written whole or not at all, and checks.jsonl is removed only once it is.
if ! python3 - "$OUT" "$((SECONDS - START))" "$MODE" <<'EOF'; then
import json, os, sys
out, secs, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
checks = []
for i, line in enumerate(open(f"{out}/checks.jsonl"), 1):
    if not line.strip():
        continue
    try:
        checks.append(json.loads(line))
    except ValueError as e:
        checks.append({"name": f"checks.jsonl line {i}", "status": "fail", "reason": f"unparsable record: {e}",
                       "seconds": 0, "figures": {"raw": line[:4000]}})
with open(f"{out}/summary.json.tmp", "w") as f:
    json.dump({"mode": mode, "checks": checks, "seconds": secs}, f, indent=1)
os.replace(f"{out}/summary.json.tmp", f"{out}/summary.json")
EOF
  say "gpu_check: summary.json was not written; the records are in $OUT/checks.jsonl"
  exit 1
fi
rm -f "$OUT/checks.jsonl" "$OUT/.session"
say "== done in $((SECONDS - START))s: $OUT/summary.json"
python3 - "$OUT/summary.json" <<'EOF' | tee -a "$LOG"
import json, sys
s = json.load(open(sys.argv[1]))
for c in s["checks"]:
    st = c["status"] + (": " + c["reason"] if c["reason"] else "")
    print(f"  {c['name']:9s} {st:45s} {c['seconds']:4d}s")
failed = [c["name"] for c in s["checks"] if c["status"] == "fail"]
print(f"gpu_check: FAILED: {' '.join(failed)}" if failed else "gpu_check: no check failed")
EOF
grep -q '"status": "fail"' "$OUT/summary.json" && exit 1
exit 0
