#!/usr/bin/env bash
# Multi-host tests on a namespaced Slurm cluster (tools/cluster.sh; root). Installs slurm-wlm and
# munge if missing, brings up a 2-host cluster, then a 4-host one, and checks:
#   1. srun -N 2 and -N 4 (--ntasks-per-node 1, ep = ranks) training equals the 1-rank run with
#      the same micro-batches, loss for loss to 1e-5 (relative);
#   2. a 2-host sbatch job (slurm/train.sbatch) preempted with scancel --signal=USR1 --batch
#      checkpoints, requeues itself, and the requeued job resumes bit-identically;
#   3. one host's rank SIGKILLed: the job ends non-zero within 10 s, srun names the lost rank,
#      no process is left on any host, the last complete checkpoint is intact (it converts);
#   4. a 4-host ep=4 checkpoint resumed on 2 hosts (ep=2) and on 1 continues within 1e-5;
# and that `cluster.sh down` leaves nothing (run twice). Prints PASS/FAIL per case, exits non-zero
# on any failure; every wait has a timeout; any exit tears the cluster down.
#   bash tools/cluster_test.sh        # ANYK_BIN=build/anyk by default; KEEP_TMP=1 keeps the work dir
#   ANYK_TRAIN_ARGS="--a2a hier" bash tools/cluster_test.sh   # more anyk train flags for every run
# shellcheck disable=SC2086  # $MODEL is a flag list, split on purpose
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
ANYK_BIN=$(realpath -m "${ANYK_BIN:-build/anyk}")
export ANYK_CLUSTER_DIR=${ANYK_CLUSTER_DIR:-/tmp/anyk-cluster-test}
CL="bash $ROOT/tools/cluster.sh"
T0=$(date +%s)
FAILS=0
say() { echo "cluster_test: $*"; }
die() {
  echo "cluster_test: FAIL: $*" >&2
  exit 1
}
pass() { say "PASS: $*"; }
failc() {
  say "FAIL: $*"
  FAILS=$((FAILS + 1))
}

[ "$(id -u)" = 0 ] || die "needs root (namespaces, bridge, Slurm daemons)"
[ -x "$ANYK_BIN" ] || die "$ANYK_BIN is not built (bash tools/build.sh, or set ANYK_BIN)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

missing=()
for p in slurmctld slurmd slurm-client munge iproute2; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    >/tmp/anyk-cluster-apt.log 2>&1 || die "cannot install ${missing[*]} (see /tmp/anyk-cluster-apt.log)"
fi

TMP=$(mktemp -d /tmp/anyk-cltest.XXXXXX)
chmod 755 "$TMP"
cleanup() {
  local rc=$?
  set +e
  $CL down >/dev/null 2>&1
  if [ "$rc" != 0 ] || [ "$FAILS" != 0 ] || [ "${KEEP_TMP:-0}" = 1 ]; then
    say "work dir kept: $TMP"
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for i in $(seq 1 3000); do echo "line $i: experts learn a coarse-to-fine ranking of what to say next."; done >"$TMP/text.txt"
"$ANYK_BIN" prepare --input "$TMP/text.txt" --out "$TMP/data" --val-fraction 0.1 >/dev/null || die "anyk prepare failed"
# Global batch 8 sequences in micro-batches of B = 2 on every layout: --grad-accum 8 / (2 x ranks), so
# every layout computes the same micro-batches (routing statistics and K draws are per micro-batch).
MODEL="--layers 2 --dim 64 --heads 2 --experts 4 --expert-hidden 64 --seq-len 64 --k-strategy layer --k-min 1 --k-max 4 --eval-windows 4 --seed 5 --batch 2"

EXTRA=${ANYK_TRAIN_ARGS:-}

up() {  # up N
  $CL up "$1" >"$TMP/up$1.log" 2>&1 || { cat "$TMP/up$1.log" >&2; die "cluster.sh up $1 failed"; }
  export SLURM_CONF=$ANYK_CLUSTER_DIR/slurm.conf
  say "cluster of $1 hosts up ($(elapsed))"
}
elapsed() { echo "$(($(date +%s) - T0)) s"; }
# train NAME NODES RANKS ARGS...: srun anyk train, one rank per host, output in $TMP/NAME.out
train() {
  local name=$1 n=$2 r=$3
  shift 3
  timeout 180 srun --mpi=pmix -N "$n" -n "$r" --ntasks-per-node=$(((r + n - 1) / n)) --kill-on-bad-exit=1 \
    "$ANYK_BIN" train --data "$TMP/data" --run-dir "$TMP/$name" $MODEL --threads 1 --eval-every 0 "$@" $EXTRA \
    >"$TMP/$name.out" 2>&1
}
# compare_losses A B FIRST LAST TOL: steps FIRST..LAST of two metrics.jsonl agree (relative TOL; 0 = exact)
compare_losses() {
  /usr/bin/python3 - "$@" <<'EOF'
import json, sys
a, b, first, last, tol = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
def losses(p):
    d = {}
    for j in map(json.loads, open(p)):
        if j["type"] == "train":
            d[j["step"]] = j["loss"]
    return d
la, lb = losses(a), losses(b)
want = list(range(first, last + 1))
for s in want:
    if s not in la or s not in lb:
        sys.exit(f"step {s} missing ({a}: {s in la}, {b}: {s in lb})")
worst = max(abs(la[s] - lb[s]) / abs(lb[s]) for s in want)
if (tol == 0 and worst != 0) or worst > tol:
    bad = [s for s in want if abs(la[s] - lb[s]) > tol * abs(lb[s])]
    sys.exit(f"steps {bad[:5]}...: {[(la[s], lb[s]) for s in bad[:3]]} (worst relative difference {worst:.2e})")
print(f"steps {first}..{last}: worst relative difference {worst:.1e}")
EOF
}
node_procs() {  # processes in any host's namespace other than slurmd
  local k p
  for k in 1 2 3 4; do
    for p in $(ip netns pids "anyk-node$k" 2>/dev/null); do
      c=$(cat "/proc/$p/comm" 2>/dev/null) || continue
      [ "$c" = slurmd ] || echo "node$k:$p:$c"
    done
  done
}

# ---- 2-host cluster ------------------------------------------------------------------------
up 2
STEPS=20
train ref1 1 1 --grad-accum 4 --steps $STEPS --log-every 1 || die "1-rank reference run failed ($TMP/ref1.out)"
if train h2 2 2 --grad-accum 2 --ep 2 --steps $STEPS --log-every 1 && grep -q "ep 2 x edp 1" "$TMP/h2/train.log" &&
  msg=$(compare_losses "$TMP/h2/metrics.jsonl" "$TMP/ref1/metrics.jsonl" 1 $STEPS 1e-5); then
  pass "srun -N 2 --ntasks-per-node 1 (ep=2) equals the 1-rank run: $msg"
else
  failc "srun -N 2 training vs the 1-rank run: ${msg:-run failed, see $TMP/h2.out}"
fi
grep -q "now connected to 10.77" "$TMP/h2.out" 2>/dev/null || true

# 3. SIGKILL of node2's rank.
kill_case() {
  local out=$TMP/kill.out pid="" t_kill t_end rc left latest
  ( train kill 2 2 --grad-accum 2 --ep 2 --steps 1000000 --log-every 50 --save-every 10 --keep 2; echo "rc=$?" >"$TMP/kill.rc" ) &
  local deadline=$(($(date +%s) + 60))
  until [ -s "$TMP/kill/checkpoints/latest" ] && [ "$(sed 's/step_//' "$TMP/kill/checkpoints/latest")" -ge 30 ] 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { failc "kill: no checkpoint step_30 after 60 s ($out)"; return; }
    sleep 0.3
  done
  for p in $(ip netns pids anyk-node2); do [ "$(cat /proc/$p/comm 2>/dev/null)" = anyk ] && pid=$p; done
  [ -n "$pid" ] || { failc "kill: no anyk process on node2"; return; }
  t_kill=$(date +%s.%N)
  kill -9 "$pid"
  deadline=$(($(date +%s) + 30))
  until [ -s "$TMP/kill.rc" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { failc "kill: srun still running 30 s after the kill"; return; }
    sleep 0.1
  done
  t_end=$(date +%s.%N)
  rc=$(sed 's/rc=//' "$TMP/kill.rc")
  local dt
  dt=$(/usr/bin/python3 -c "print(f'{$t_end - $t_kill:.1f}')")
  # Slurm's step daemons finish their clean-up after srun returns: allow them up to 15 s.
  for _ in $(seq 1 75); do
    left=$(node_procs)
    [ -z "$left" ] && break
    sleep 0.2
  done
  latest=$(cat "$TMP/kill/checkpoints/latest")
  local why=""
  [ "$rc" != 0 ] || why+=" exit status 0;"
  /usr/bin/python3 -c "import sys; sys.exit(0 if $dt < 10 else 1)" || why+=" took $dt s (> 10 s);"
  grep -q "node2: task 1: Killed" "$out" || why+=" no line naming node2's task 1 in $out;"
  [ -z "$left" ] || why+=" processes left: $left;"
  timeout 60 "$ANYK_BIN" convert --checkpoint "$TMP/kill/checkpoints/$latest" --to consolidated \
    --out "$TMP/kill_latest.h5" >"$TMP/kill_convert.out" 2>&1 || why+=" $latest does not convert (CRC-checked read);"
  if [ -z "$why" ]; then
    pass "rank 1 on node2 SIGKILLed: job ended in $dt s, exit $rc, '$(grep -m1 -o 'srun: error: node2: task 1: Killed' "$out")', no process left, $latest intact"
  else
    failc "kill:$why"
  fi
}
kill_case

# The next job needs every host idle again: after the kill, slurmctld may still be completing the
# step, or may have drained the host whose task died. Wait (30 s at most) and resume drained hosts.
nodes_idle() {
  local deadline=$(($(date +%s) + 30)) states
  while :; do
    states=$(timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)
    if [ -n "$states" ] && ! grep -qv ' idle$' <<<"$states"; then return 0; fi
    for n in $(awk '$2 ~ /drain|down/ {print $1}' <<<"$states"); do
      timeout 10 scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1
    done
    [ "$(date +%s)" -lt "$deadline" ] || { say "hosts not idle after 30 s: $(tr '\n' ' ' <<<"$states")"; return 1; }
    sleep 0.5
  done
}
nodes_idle || failc "hosts not idle before the preemption case"

# 2. preemption of a 2-host sbatch job: scancel --signal=USR1 --batch, requeue, resume.
job_field() { timeout 10 scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
preempt_case() {
  local out=$TMP/pre.out job st deadline n1
  local steps=150
  job=$(ANYK_BIN=$ANYK_BIN DATA_DIR=$TMP/data RUN_DIR=$TMP/pre STEPS=$steps SAVE_EVERY=0 KEEP=2 LOG_EVERY=1 \
    EVAL_EVERY=0 EP=2 MODEL_ARGS="$MODEL --grad-accum 2" ANYK_SRUN_MPI=pmix REQUEUE=1 MAX_RESTARTS=1 THREADS=1 TRAIN_ARGS="$EXTRA" \
    sbatch --parsable --job-name=anyk-pre --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --time=10 \
    --requeue --open-mode=append --output="$out" "$ROOT/slurm/train.sbatch") || { failc "preempt: sbatch failed"; return; }
  job=${job%%;*}
  deadline=$(($(date +%s) + 60))
  until grep -q '"step": 20,' "$TMP/pre/metrics.jsonl" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { failc "preempt: job $job did not reach step 20 in 60 s ($out)"; return; }
    sleep 0.2
  done
  scancel --signal=USR1 --batch "$job" || { failc "preempt: scancel --signal failed"; return; }
  deadline=$(($(date +%s) + 60))
  while :; do
    st=$(job_field "$job" JobState)
    if [ "$st" = PENDING ] && grep -q "requeueing job $job" "$out"; then
      # Release the requeued job only once its first instance has left every host, and not in
      # the second of the requeue: slurmd refuses a credential of the same job id issued in the
      # second it revoked the old one ("Killing non-startable batch JobId=N: Job credential
      # revoked", seen in a CI run under load). Slurm's own ~2 min BeginTime hold avoids it.
      sleep 2
      nodes_idle || say "preempt: hosts not idle before the release (continuing)"
      scontrol update JobId="$job" StartTime=now
      break
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { failc "preempt: job $job not requeued (state $st, $out)"; return; }
    sleep 0.5
  done
  deadline=$(($(date +%s) + 120))
  while :; do
    st=$(job_field "$job" JobState)
    [ "$st" = COMPLETED ] && break
    case $st in FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY) failc "preempt: job $job ended $st ($out)"; return ;; esac
    [ "$(date +%s)" -lt "$deadline" ] || { failc "preempt: job $job not done 120 s after the requeue ($st)"; return; }
    sleep 0.5
  done
  # The signal lands after a step ("caught SIGUSR1 at step N": N is saved) or between the
  # micro-batches of step N+1 ("caught SIGUSR1 during step N+1: abandoned it": N is saved).
  n1=$(sed -n 's/.*caught SIGUSR1 at step \([0-9]*\).*/\1/p' "$out" | head -n 1)
  if [ -z "$n1" ]; then
    n1=$(sed -n 's/.*caught SIGUSR1 during step \([0-9]*\): abandoned it; checkpoint.*/\1/p' "$out" | head -n 1)
    [ -n "$n1" ] && n1=$((n1 - 1))
  fi
  grep -q "resuming from $TMP/pre/checkpoints/latest (step $n1)" "$out" || { failc "preempt: the requeued job did not resume from step '$n1' ($out)"; return; }
  train preref 2 2 --grad-accum 2 --ep 2 --steps $steps --log-every 1 --save-every 0 || { failc "preempt: reference run failed"; return; }
  local msg
  if msg=$(compare_losses "$TMP/pre/metrics.jsonl" "$TMP/preref/metrics.jsonl" 1 $steps 0) &&
    [ "$(grep -c '"type": "train"' "$TMP/pre/metrics.jsonl")" = "$steps" ]; then
    pass "2-host sbatch job $job: USR1 at step $n1 -> checkpoint, requeue (restart $(job_field "$job" Restarts)), resume; $msg (bit-identical to an uninterrupted run)"
  else
    failc "preempt: resumed losses differ from the uninterrupted run: $msg"
  fi
}
preempt_case
$CL down >"$TMP/down2.log" 2>&1 || failc "cluster.sh down (2 hosts) failed"
say "2-host cluster down ($(elapsed))"

# ---- 4-host cluster ------------------------------------------------------------------------
up 4
if train h4 4 4 --ep 4 --steps $STEPS --log-every 1 --save-every 10 --keep 5 && grep -q "ep 4 x edp 1" "$TMP/h4/train.log" &&
  msg=$(compare_losses "$TMP/h4/metrics.jsonl" "$TMP/ref1/metrics.jsonl" 1 $STEPS 1e-5); then
  pass "srun -N 4 --ntasks-per-node 1 (ep=4) equals the 1-rank run: $msg"
else
  failc "srun -N 4 training vs the 1-rank run: ${msg:-run failed, see $TMP/h4.out}"
fi
# 4. the 4-host ep=4 checkpoint at step 10 resumed on 2 hosts (ep=2) and on 1.
for lay in "2 2 --grad-accum 2 --ep 2" "1 1 --grad-accum 4"; do
  set -- $lay
  name=res$1
  msg=""
  if train "$name" "$@" --steps $STEPS --log-every 1 --resume "$TMP/h4/checkpoints/step_10" &&
    msg=$(compare_losses "$TMP/$name/metrics.jsonl" "$TMP/h4/metrics.jsonl" 11 $STEPS 1e-5); then
    pass "the 4-host ep=4 checkpoint step_10 resumed on $1 host(s) (ep=$2) continues the 4-host run: $msg"
  else
    failc "resume of the ep=4 checkpoint on $1 host(s): ${msg:-run failed, see $TMP/$name.out}"
  fi
done

# ---- teardown, twice ---------------------------------------------------------------------
for i in 1 2; do
  $CL down >"$TMP/down4.$i.log" 2>&1 || failc "cluster.sh down #$i failed"
done
left=""
ip link show anykbr0 >/dev/null 2>&1 && left+=" bridge anykbr0;"
ip netns list | grep -q anyk-node && left+=" namespaces $(ip netns list | grep anyk-node | tr '\n' ' ');"
[ -e "$ANYK_CLUSTER_DIR" ] && left+=" $ANYK_CLUSTER_DIR;"
pgrep -f "$ANYK_CLUSTER_DIR/slurm.conf" >/dev/null && left+=" daemons;"
if [ -z "$left" ]; then pass "cluster.sh down (twice): no namespace, bridge, daemon or state dir left"; else failc "after down:$left"; fi

if [ "$FAILS" = 0 ]; then
  say "all cases PASS in $(elapsed)"
else
  say "$FAILS case(s) FAILED ($(elapsed)); work dir $TMP"
  exit 1
fi
