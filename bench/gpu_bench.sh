#!/usr/bin/env bash
# GPU training benchmark (run by tools/gpu_check.sh; docs/gpu.md): a GEMM-bound MoE, L=8 C=2048
# NH=16 E=8 H=5632 T=1024, `anyk train --device cuda --precision bf16`, layer-wise K in [1,4]
# against fixed K=2. WARMUP steps are dropped, STEPS steps timed. Reports tokens/s, MFU against the
# card's bf16 dense peak (PEAK_TFLOPS, 989 for H100/H200 SXM) and against a cuBLAS bf16 8192^3 GEMM
# measured in the same run (bench/gemm_peak.cu), the step-time split (--profile fields of
# metrics.jsonl) and the memory high-water mark (nvidia-smi, sampled every 200 ms).
# MFU uses anyk's own FLOP count (launch/trainer.cpp): per token 6 * active_params(mean K)
# + 12 L T C, active_params(k) = V C + L (4 C^2 + E C + 3 k H C) (model/config.cpp).
# The fixed-K=2 configuration also runs once per expert GEMM strategy (ANYK_EXPERT_GEMM, docs/gpu.md):
# `loop` is the fixed K=2 run itself (both main runs use loop), `streams` and `grouped` run
# XGEMM_WARMUP + XGEMM_STEPS steps each; "expert_gemm" holds each one's tokens/s (null if it failed),
# "expert_gemm_grouped_bf16" whether grouped's bf16 GEMMs ran grouped or fell back to loop.
# Usage: bench/gpu_bench.sh OUT.json   (env: ANYK_BIN, GEMM_PEAK, STEPS=20, WARMUP=3,
# XGEMM_STEPS=8, XGEMM_WARMUP=2, BATCHES="8 4" tried in turn until one fits, PEAK_TFLOPS=989,
# RUN_TIMEOUT=150).
# Exits 77 with {"status": "skip"} when no GPU is visible.
set -uo pipefail
OUT=${1:?usage: bench/gpu_bench.sh OUT.json}
ANYK_BIN=${ANYK_BIN:-build-cuda/anyk}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
XGEMM_STEPS=${XGEMM_STEPS:-8}
XGEMM_WARMUP=${XGEMM_WARMUP:-2}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
RUN_TIMEOUT=${RUN_TIMEOUT:-150}
WORK=$(mktemp -d /tmp/gpu_bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# The model (L C NH E H T) and the device flags may be overridden to check this script on a CPU
# (BENCH_DEVICE_FLAGS="--device cpu", a small BENCH_SHAPE, BENCH_NO_GPU=1; ANYK_EXPERT_GEMM is then
# ignored: only cuda::init reads it); the defaults are the benchmark.
read -r L C NH E H T <<<"${BENCH_SHAPE:-8 2048 16 8 5632 1024}"
MODEL="--layers $L --dim $C --heads $NH --experts $E --expert-hidden $H --seq-len $T"
DEVICE_FLAGS=${BENCH_DEVICE_FLAGS:---device cuda --precision bf16}

if [ -z "${BENCH_NO_GPU:-}" ] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo '{"status": "skip", "reason": "no CUDA device visible"}' >"$OUT"
  echo "no CUDA device visible"
  exit 77
fi

# The GEMM reference: the packed/built binary, else compiled here with nvcc.
GEMM_PEAK=${GEMM_PEAK:-$(command -v gemm_peak || echo "$(dirname "$ANYK_BIN")/gemm_peak")}
if [ ! -x "$GEMM_PEAK" ] && command -v nvcc >/dev/null; then
  nvcc -O2 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -o "$WORK/gemm_peak" "$(dirname "$0")/gemm_peak.cu" -lcublas && GEMM_PEAK=$WORK/gemm_peak
fi
GEMM_JSON=$(timeout 60 "$GEMM_PEAK" 8192 2>&1 | tail -1)
[ -n "$GEMM_JSON" ] || GEMM_JSON="gemm_peak did not run"
echo "gemm: $GEMM_JSON"

# A corpus long enough for every step: (WARMUP+STEPS) x B x T tokens and more.
python3 -c "
import random
r = random.Random(1)
w = ['expert', 'router', 'token', 'layer', 'gradient', 'the', 'of', 'and', 'mixture', 'sparse']
with open('$WORK/text.txt', 'w') as f:
    for i in range(60000): f.write(' '.join(r.choice(w) for _ in range(12)) + '.\n')
"
"$ANYK_BIN" prepare --input "$WORK/text.txt" --out "$WORK/data" >/dev/null || exit 1

# One configuration: trains in the background, stops it (SIGKILL, no final save) once the last
# timed step is logged, samples GPU memory meanwhile. Prints the run dir; rc 1 on failure.
# XGEMM (default loop) is the run's expert GEMM strategy.
run_config() {  # name batch extra...
  local name=$1 batch=$2
  shift 2
  local dir=$WORK/$name total=$((WARMUP + STEPS))
  ANYK_EXPERT_GEMM=${XGEMM:-loop} "$ANYK_BIN" train --data "$WORK/data" --run-dir "$dir" $MODEL --batch "$batch" --steps $((total + 5)) \
    $DEVICE_FLAGS --profile --log-every 1 --eval-every 0 --eval-windows 1 --save-every 100000 \
    --warmup 2 --seed 1 "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$! t0=$SECONDS mem=0
  while kill -0 "$pid" 2>/dev/null; do
    local m
    m=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
    [ -n "$m" ] && [ "$m" -gt "$mem" ] && mem=$m
    if [ -f "$dir/metrics.jsonl" ] && grep -Eq "\"step\": ?$total," "$dir/metrics.jsonl"; then break; fi
    if [ $((SECONDS - t0)) -gt "$RUN_TIMEOUT" ]; then echo "$name: timed out after ${RUN_TIMEOUT}s" >>"$WORK/$name.log"; break; fi
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  echo "${mem:-0}" >"$dir.mem"
  grep -Eq "\"step\": ?$total," "$dir/metrics.jsonl" 2>/dev/null
}

summarise() {  # name batch -> one JSON object
  python3 - "$WORK/$1/metrics.jsonl" "$(cat "$WORK/$1.mem")" "$1" "$2" "$WARMUP" "$PEAK_TFLOPS" "$GEMM_JSON" \
    "$L $C $E $H $T" <<'EOF'
import json, sys
path, mem, name, B, warm, peak, gemm, shape = sys.argv[1:]
B, warm, peak = int(B), int(warm), float(peak)
(L, C, E, H, T), V = map(int, shape.split()), 256
recs = [r for r in map(json.loads, open(path)) if r.get("type") == "train"][warm:]
def flops_per_token(k):
    return 6 * (V * C + L * (4 * C * C + E * C + 3 * k * H * C)) + 12 * L * T * C
tok = B * T
secs = [tok / r["tok_per_s"] for r in recs]
flops = sum(tok * flops_per_token(r["mean_k"]) for r in recs)
try:
    g = json.loads(gemm)["tflops_median"]
except Exception:
    g = None
tflops = flops / sum(secs) / 1e12
mean = lambda k: round(sum(r.get(k, 0) for r in recs) / len(recs) * 1e3, 3)
print(json.dumps({"name": name, "batch": B, "timed_steps": len(recs), "tokens_per_s": round(tok * len(recs) / sum(secs)),
    "step_ms": round(1e3 * sum(secs) / len(recs), 2), "mean_k": sum(r["mean_k"] for r in recs) / len(recs),
    "model_tflops": float(f"{tflops:.4g}"), "mfu_vs_peak": float(f"{tflops / peak:.4g}"),
    "mfu_vs_gemm": float(f"{tflops / g:.4g}") if g else None,
    "split_ms": {"compute": mean("t_compute"), "dispatch": mean("t_dispatch"), "sync": mean("t_sync"), "optim": mean("t_optim")},
    "gpu_mem_high_water_mib": int(mem), "arena_mb": max(r.get("arena_mb", 0) for r in recs)}))
EOF
}

results=()
status=pass
batch=""
for b in ${BATCHES:-8 4}; do
  if run_config layer_k1_4 "$b" --k-strategy layer --k-min 1 --k-max 4; then batch=$b; break; fi
  echo "layer K in [1,4] at batch $b failed:"; tail -5 "$WORK/layer_k1_4.log"
  rm -rf "$WORK/layer_k1_4"
done
if [ -n "$batch" ]; then
  results+=("$(summarise layer_k1_4 "$batch")")
  if run_config fixed_k2 "$batch" --k-strategy fixed --k 2; then
    results+=("$(summarise fixed_k2 "$batch")")
    echo "${results[-1]}" >"$WORK/xgemm_loop.json"
  else
    status=fail
    echo "fixed K=2 failed:"; tail -5 "$WORK/fixed_k2.log"
  fi
  for s in streams grouped; do  # bash keeps these prefix assignments for the function call only
    if XGEMM=$s STEPS=$XGEMM_STEPS WARMUP=$XGEMM_WARMUP run_config "xgemm_$s" "$batch" --k-strategy fixed --k 2; then
      WARMUP=$XGEMM_WARMUP summarise "xgemm_$s" "$batch" >"$WORK/xgemm_$s.json"
      if [ $s = grouped ]; then  # bf16 grouped GEMMs fall back to loop when cuBLAS refuses them
        grep -q "runs bf16 expert GEMMs as loop" "$WORK/xgemm_$s.log" && echo loop >"$WORK/grouped_bf16" ||
          echo grouped >"$WORK/grouped_bf16"
      fi
    else
      status=fail
      echo "fixed K=2 with ANYK_EXPERT_GEMM=$s failed:"; tail -5 "$WORK/xgemm_$s.log"
    fi
  done
else
  status=fail
fi
python3 - "$OUT" "$status" "$GEMM_JSON" "$PEAK_TFLOPS" "$MODEL $DEVICE_FLAGS" "$WORK" "${results[@]}" <<'EOF'
import json, os, sys
out, status, gemm, peak, model, work, *runs = sys.argv[1:]
try:
    gemm = json.loads(gemm)
except Exception:
    gemm = {"error": gemm}
runs = [json.loads(r) for r in runs]
res = {"status": status, "model": model, "peak_tflops": float(peak),
       "gemm": gemm, "runs": runs}
# fixed K=2 per expert GEMM strategy: tokens/s (null: the run failed or did not start), and each run's summary
xg = {s: json.load(open(f"{work}/xgemm_{s}.json")) if os.path.exists(f"{work}/xgemm_{s}.json") else None
      for s in ("loop", "streams", "grouped")}
res["expert_gemm"] = {s: r["tokens_per_s"] if r else None for s, r in xg.items()}
res["expert_gemm_runs"] = {s: r for s, r in xg.items() if r}
res["expert_gemm_grouped_bf16"] = open(f"{work}/grouped_bf16").read().strip() if os.path.exists(f"{work}/grouped_bf16") else None
if len(runs) == 2 and runs[1]["model_tflops"] > 0:  # random layer-wise K against fixed K, per FLOP (E[K] = 2.5 vs 2)
    res["layer_k_mfu_over_fixed"] = float(f'{runs[0]["model_tflops"] / runs[1]["model_tflops"]:.4g}')
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res))
EOF
[ $? = 0 ] && [ "$status" = pass ]
