#!/usr/bin/env bash
# The real-Slurm test (run by .ci/run after the unit tests; needs root). It installs Debian's
# slurm-wlm daemons and munge if missing, starts a private one-node cluster on localhost (its own
# munged socket, slurm.conf, ports and state under a temp dir), and checks:
#   1. `srun -n 2 anyk train ... --ep 2` runs (PMIx) and writes sane metrics;
#   2. slurm/train.sbatch, scaled down, completes under `sbatch --wait` and leaves its outputs
#      (model.h5, checkpoints/latest), with srun and with the mpirun launcher;
#   3. preemption: a 2-minute job whose `--signal=B:USR1@80` warning arrives mid-run checkpoints on
#      the signal and requeues itself; the requeued job resumes from `latest`, is signalled again
#      (scancel --signal=USR1 --batch, as a preemption would), and a resubmission finishes the run;
#      the stitched loss sequence equals an uninterrupted reference run's exactly;
#   4. tools/scaling_study.py on 1 and 2 ranks (strong + weak) writes a complete table and plot;
#   5. slurm/train_gpu.sbatch, without a GPU: bash -n, one task per GPU, sbatch --test-only accepts
#      its non-GPU #SBATCH lines and sbatch --help lists its GPU options, and with stand-ins for
#      srun and anyk it launches `anyk train --device cuda --comm nccl` with the expected srun flags.
# It stops every daemon it started, whatever happened. If Slurm cannot be installed or started it
# says why and fails. Every wait has a timeout; the whole test takes about 3-4 minutes on 2 cores.
#   bash tools/slurm_test.sh            # ANYK_BIN=build/anyk by default; KEEP_TMP=1 keeps the temp dir
# shellcheck disable=SC2086  # $MODEL and $SIG_MODEL are flag lists, split on purpose
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ANYK_BIN=$(realpath -m "${ANYK_BIN:-build/anyk}")
KEEP_TMP=${KEEP_TMP:-0}
T0=$(date +%s)

say() { echo "slurm_test: $*"; }
fail() {
  echo "slurm_test: FAIL: $*" >&2
  exit 1
}
elapsed() { echo "$(($(date +%s) - T0))s"; }

[ "$(id -u)" = 0 ] || fail "needs root (installs packages; runs slurmctld/slurmd with SlurmUser=root)"
[ -x "$ANYK_BIN" ] || fail "$ANYK_BIN is not built (bash tools/build.sh, or set ANYK_BIN)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# ---- packages --------------------------------------------------------------------------------
missing=()
for p in slurmctld slurmd slurm-client munge python3-matplotlib; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    >/tmp/anyk-slurm-apt.log 2>&1 || {
    tail -n 20 /tmp/anyk-slurm-apt.log >&2
    fail "cannot install ${missing[*]} with apt-get (see /tmp/anyk-slurm-apt.log)"
  }
fi
for b in munged slurmctld slurmd srun sbatch squeue scontrol scancel sinfo; do
  command -v "$b" >/dev/null || fail "$b not found after installing slurm-wlm and munge"
done
say "$(slurmctld -V), munge $(munged -V 2>&1 | awk '{print $1}' | sed 's/munge-//')"

# ---- a private one-node cluster --------------------------------------------------------------
TMP=$(mktemp -d /tmp/anyk-slurm.XXXXXX)
chmod 755 "$TMP"
mkdir -p "$TMP"/{state,spool,log,munge,jobs}
chown munge:munge "$TMP/munge"
chmod 700 "$TMP/munge"
MUNGE_PID="" CTLD_PID="" SLURMD_PID=""
STARTED_OK=0

dump_logs() {
  for f in "$TMP"/log/*.log "$TMP"/munge/munged.log; do
    [ -f "$f" ] || continue
    echo "---- $f (last 15 lines)" >&2
    tail -n 15 "$f" >&2
  done
}
stop_pid() {  # stop_pid NAME PID: TERM, wait up to 10 s, then KILL
  local name=$1 pid=$2 i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) ignored SIGTERM: SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  set +e
  if [ -n "$CTLD_PID" ] && kill -0 "$CTLD_PID" 2>/dev/null; then
    timeout 10 scancel --quiet --full --signal=KILL --user=root >/dev/null 2>&1
    for _ in $(seq 1 40); do
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  stop_pid slurmd "$SLURMD_PID"
  stop_pid slurmctld "$CTLD_PID"
  stop_pid munged "$MUNGE_PID"
  if [ "$rc" != 0 ]; then
    [ "$STARTED_OK" = 1 ] || dump_logs
    say "failed after $(elapsed); logs and runs kept in $TMP"
  elif [ "$KEEP_TMP" = 1 ]; then
    say "temp dir kept: $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {  # the first port from $1 on that nothing listens on
  local p=$1
  while (echo >/dev/tcp/127.0.0.1/"$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}
CTLD_PORT=$(free_port 26817)
SLURMD_PORT=$(free_port $((CTLD_PORT + 1)))
NODE=$(hostname -s)
NCPU=$(nproc)

# munge with its own key and socket, so nothing of the machine's munge is touched.
dd if=/dev/urandom of="$TMP/munge/munge.key" bs=1024 count=1 status=none
chown munge:munge "$TMP/munge/munge.key"
chmod 400 "$TMP/munge/munge.key"
MUNGE_SOCK=$TMP/munge/munge.sock
setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground --force \
  --socket="$MUNGE_SOCK" --key-file="$TMP/munge/munge.key" --pid-file="$TMP/munge/munged.pid" \
  --log-file="$TMP/munge/munged.log" --seed-file="$TMP/munge/munged.seed" >"$TMP/log/munged.out" 2>&1 &
MUNGE_PID=$!
for _ in $(seq 1 50); do
  [ -S "$MUNGE_SOCK" ] && break
  kill -0 "$MUNGE_PID" 2>/dev/null || break
  sleep 0.2
done
[ -S "$MUNGE_SOCK" ] || { cat "$TMP/log/munged.out" >&2; fail "munged did not start (no socket $MUNGE_SOCK)"; }
munge -S "$MUNGE_SOCK" -n | unmunge -S "$MUNGE_SOCK" >/dev/null || fail "munge credential round-trip failed"

cat >"$TMP/slurm.conf" <<EOF
# anyk slurm_test: one node on localhost, daemons as root, no cgroups.
ClusterName=anyktest
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$TMP/state
SlurmdSpoolDir=$TMP/spool
SlurmctldPidFile=$TMP/slurmctld.pid
SlurmdPidFile=$TMP/slurmd.pid
SlurmctldLogFile=$TMP/log/slurmctld.log
SlurmdLogFile=$TMP/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$TMP/log/jobcomp.txt
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=900
KillWait=10
InactiveLimit=0
JobRequeue=1
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
export SLURM_CONF=$TMP/slurm.conf
slurmctld -D -f "$SLURM_CONF" >"$TMP/log/slurmctld.out" 2>&1 &
CTLD_PID=$!
slurmd -D -f "$SLURM_CONF" >"$TMP/log/slurmd.out" 2>&1 &
SLURMD_PID=$!
state=""
for _ in $(seq 1 60); do
  kill -0 "$CTLD_PID" 2>/dev/null || { cat "$TMP/log/slurmctld.out" >&2; fail "slurmctld exited at start-up"; }
  kill -0 "$SLURMD_PID" 2>/dev/null || { cat "$TMP/log/slurmd.out" >&2; fail "slurmd exited at start-up"; }
  state=$(timeout 5 sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || fail "node $NODE not idle after 60 s (sinfo says '${state:-nothing}')"
STARTED_OK=1
MPI_PLUGINS=$(srun --mpi=list 2>&1 | tr '\n' ' ')
if echo "$MPI_PLUGINS" | grep -qw pmix; then SRUN_MPI=pmix; else SRUN_MPI=pmi2; fi
say "cluster up in $(elapsed): node $NODE ($NCPU CPUs) idle, ports $CTLD_PORT/$SLURMD_PORT, srun --mpi=list: $MPI_PLUGINS-> using $SRUN_MPI"

# ---- data and helpers ------------------------------------------------------------------------
if [ -d /usr/share/games/fortunes ]; then
  "$ANYK_BIN" prepare --input /usr/share/games/fortunes --out "$TMP/data" >/dev/null ||
    fail "$ANYK_BIN prepare failed"
else
  for i in $(seq 1 3000); do echo "line $i: experts learn a coarse-to-fine ranking of what to say next."; done >"$TMP/text.txt"
  "$ANYK_BIN" prepare --input "$TMP/text.txt" --out "$TMP/data" --val-fraction 0.1 >/dev/null ||
    fail "$ANYK_BIN prepare failed"
fi
MODEL="--layers 2 --dim 64 --heads 2 --experts 4 --expert-hidden 64 --seq-len 64 --batch 4 --k-strategy layer --k-min 1 --k-max 4 --eval-windows 4 --seed 5"
HAS_CKPT=0
TRAIN_HELP=$("$ANYK_BIN" train --help)
grep -q -- --save-every <<<"$TRAIN_HELP" && HAS_CKPT=1

job_field() { timeout 10 scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
wait_job_done() {  # wait_job_done JOB TIMEOUT -> prints the final JobState
  local job=$1 deadline=$(($(date +%s) + $2)) st
  while :; do
    st=$(job_field "$job" JobState)
    case "$st" in PENDING | RUNNING | CONFIGURING | COMPLETING | REQUEUED | SUSPENDED | "") ;; *) echo "$st"; return 0 ;; esac
    [ "$(date +%s)" -lt "$deadline" ] || { echo "TIMEOUT($st)"; return 0; }
    sleep 1
  done
}
# metrics JSON checks and loss comparisons
py() { /usr/bin/python3 - "$@"; }

# ---- 1. srun -n 2 anyk train --ep 2 ----------------------------------------------------------
say "[1/5] srun --mpi=$SRUN_MPI -n 2 anyk train --ep 2 (20 steps)"
if ! timeout 180 srun --mpi="$SRUN_MPI" -n 2 --cpu-bind=cores "$ANYK_BIN" train --data "$TMP/data" --run-dir "$TMP/srun" \
  --ep 2 $MODEL --steps 20 --log-every 5 --eval-every 0 --profile >"$TMP/jobs/srun.out" 2>&1; then
  tail -n 20 "$TMP/jobs/srun.out" >&2
  fail "srun -n 2 anyk train failed (exit status above; output in $TMP/jobs/srun.out)"
fi
grep -q "layout: 2 ranks = ep 2 x edp 1" "$TMP/srun/train.log" || fail "srun run: train.log has no 2-rank ep=2 layout line"
py "$TMP/srun/metrics.jsonl" <<'EOF' || fail "srun run: metrics.jsonl check failed"
import json, math, sys
tr = [j for j in map(json.loads, open(sys.argv[1])) if j["type"] == "train"]
steps = [j["step"] for j in tr]
assert steps == [1, 5, 10, 15, 20], steps
for j in tr:
    assert math.isfinite(j["loss"]) and j["tok_per_s"] > 0 and 0 < j["mfu"] < 1, j
    assert 1 <= j["mean_k"] <= 4 and j["t_compute"] > 0, j
assert any(j["t_dispatch"] > 0 for j in tr), "no time in the expert all-to-all: experts not sharded?"
assert tr[-1]["loss"] < tr[0]["loss"], "loss did not go down"
print(f"slurm_test:       ok: steps {steps}, loss {tr[0]['loss']:.3f} -> {tr[-1]['loss']:.3f}, "
      f"{tr[-1]['tok_per_s']:.0f} tok/s, dispatch {1e3 * tr[-1]['t_dispatch']:.2f} ms/step")
EOF

# ---- 2. sbatch --wait slurm/train.sbatch, scaled down ----------------------------------------
run_sbatch_wait() {  # run_sbatch_wait NAME LAUNCHER: a 30-step train.sbatch job; checks it completed
  local name=$1 launcher=$2 out job st
  out=$TMP/jobs/$name.out
  job=$(ANYK_BIN=$ANYK_BIN DATA_DIR=$TMP/data RUN_DIR=$TMP/$name STEPS=30 SAVE_EVERY=10 KEEP=2 LOG_EVERY=10 \
    EVAL_EVERY=0 EP=2 MODEL_ARGS="$MODEL" ANYK_LAUNCHER=$launcher ANYK_SRUN_MPI=$SRUN_MPI \
    timeout 240 sbatch --wait --parsable --job-name="anyk-$name" --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 \
    --time=5 --output="$out" "$ROOT/slurm/train.sbatch") || {
    [ -f "$out" ] && tail -n 20 "$out" >&2
    fail "sbatch --wait slurm/train.sbatch ($launcher) did not succeed (output: $out)"
  }
  job=${job%%;*}
  st=$(job_field "$job" JobState)
  [ "$st" = COMPLETED ] || fail "job $job ($launcher) ended in state '$st', not COMPLETED"
  [ -s "$TMP/$name/model.h5" ] || fail "job $job ($launcher) left no $TMP/$name/model.h5"
  [ -s "$TMP/$name/sweep.json" ] || fail "job $job ($launcher) left no sweep.json"
  grep -q '"step": 30' "$TMP/$name/metrics.jsonl" || fail "job $job ($launcher): metrics.jsonl has no step 30"
  if [ "$HAS_CKPT" = 1 ]; then
    [ "$(cat "$TMP/$name/checkpoints/latest" 2>/dev/null)" = step_30 ] ||
      fail "job $job ($launcher): checkpoints/latest does not name step_30"
    [ -s "$TMP/$name/checkpoints/step_30/meta.h5" ] || fail "job $job ($launcher): no step_30/meta.h5"
  fi
  say "      ok: job $job ($launcher) COMPLETED: model.h5, sweep.json, metrics to step 30$([ "$HAS_CKPT" = 1 ] && echo ", checkpoints/latest = step_30 ($(find "$TMP/$name/checkpoints" -maxdepth 1 -name "step_*" | wc -l) kept)")"
}
say "[2/5] sbatch --wait slurm/train.sbatch (1 node x 2 tasks, 30 steps; srun, then the mpirun launcher)"
run_sbatch_wait sbatch_srun srun
run_sbatch_wait sbatch_mpirun mpirun

# ---- 3. time-limit signal -> checkpoint -> requeue -> resume; exact loss continuation -------
if [ "$HAS_CKPT" != 1 ]; then
  fail "[3/5] anyk train has no --save-every/--resume: cannot test checkpoint on signal"
fi
say "[3/5] preemption: --time=2 --signal=B:USR1@80, requeue, resume, compare with an uninterrupted run"
SIG_MODEL="$MODEL --warmup 5 --lr 1e-3 --min-lr 1e-3"  # constant LR after warm-up: --steps may differ per leg
CUT=$TMP/cut
CUT_OUT=$TMP/jobs/cut.out
JOB=$(ANYK_BIN=$ANYK_BIN DATA_DIR=$TMP/data RUN_DIR=$CUT STEPS=1000000 SAVE_EVERY=0 KEEP=2 LOG_EVERY=1 EVAL_EVERY=0 \
  EP=2 MODEL_ARGS="$SIG_MODEL" ANYK_SRUN_MPI=$SRUN_MPI REQUEUE=1 MAX_RESTARTS=1 \
  sbatch --parsable --job-name=anyk-cut --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=2 \
  --signal=B:USR1@80 --requeue --open-mode=append --output="$CUT_OUT" "$ROOT/slurm/train.sbatch")
JOB=${JOB%%;*}
wait_for_line() {  # wait_for_line FILE REGEX TIMEOUT WHAT: prints the first matching line
  local deadline=$(($(date +%s) + $3)) line
  while :; do
    line=$(grep -E -m1 "$2" "$1" 2>/dev/null || true)
    [ -n "$line" ] && { echo "$line"; return 0; }
    if [ "$(date +%s)" -ge "$deadline" ]; then
      [ -f "$1" ] && grep -v '^step\|time/step' "$1" | tail -n 20 >&2
      fail "$4: nothing after $3 s (job $JOB, state $(job_field "$JOB" JobState); output $1)"
    fi
    sleep 1
  done
}
caught_step() { sed -n 's/.*caught SIGUSR1 at step \([0-9]*\).*/\1/p' <<<"$1"; }
line=$(wait_for_line "$CUT_OUT" "caught SIGUSR1 at step" 110 "checkpoint on Slurm's time-limit warning (SIGUSR1)")
N1=$(caught_step "$line")
[ -n "$N1" ] && [ "$N1" -ge 1 ] || fail "cannot read the step from: $line"
[ -d "$CUT/checkpoints/step_$N1" ] || fail "no checkpoint directory step_$N1 after the signal"
t_start=$(grep -m1 "job $JOB (restart 0)" "$CUT_OUT" | cut -c15-33)
t_sig=$(grep -m1 'received SIGUSR1' "$CUT_OUT" | cut -c15-33)
say "      job $JOB: Slurm's warning (nominally 40 s in) arrived $(($(date -d "$t_sig" +%s) - $(date -d "$t_start" +%s))) s after the job started; $line"
wait_for_line "$CUT_OUT" "requeueing job $JOB" 30 "requeue after the signal" >/dev/null
# Slurm holds a requeued job ~120 s (BeginTime) before it is eligible again: release it now.
deadline=$(($(date +%s) + 60))
while :; do
  st=$(job_field "$JOB" JobState)
  if [ "$st" = PENDING ]; then
    scontrol update JobId="$JOB" StartTime=now || fail "scontrol update JobId=$JOB StartTime=now failed"
    break
  fi
  [ "$st" = RUNNING ] && [ "$(job_field "$JOB" Restarts)" = 1 ] && break
  [ "$(date +%s)" -lt "$deadline" ] || fail "job $JOB was not requeued (state $st)"
  sleep 1
done
wait_for_line "$CUT_OUT" "resumed from .*step_$N1" 90 "requeued job resuming from step $N1" >/dev/null
# Preempt the requeued job once it has made progress: SIGUSR1 to the batch shell, as --signal=B: does.
deadline=$(($(date +%s) + 60))
while :; do
  last=$(grep -o '"step": [0-9]*' "$CUT/metrics.jsonl" | tail -n 1 | grep -o '[0-9]*' || echo 0)
  [ "$last" -ge $((N1 + 40)) ] && break
  [ "$(date +%s)" -lt "$deadline" ] || fail "requeued job did not reach step $((N1 + 40)) (at $last)"
  sleep 0.5
done
scancel --signal=USR1 --batch "$JOB" || fail "scancel --signal=USR1 --batch $JOB failed"
st=$(wait_job_done "$JOB" 60)
[ "$st" = COMPLETED ] || fail "signalled requeued job $JOB ended in state $st, not COMPLETED"
[ "$(job_field "$JOB" Restarts)" = 1 ] || fail "job $JOB: Restarts=$(job_field "$JOB" Restarts), expected 1"
N2=$(caught_step "$(grep "caught SIGUSR1 at step" "$CUT_OUT" | tail -n 1)")
[ -n "$N2" ] && [ "$N2" -gt "$N1" ] || fail "second stop: step '$N2' is not after step $N1"
grep -q "stopped by SIGUSR1 with steps left: resubmit" "$CUT_OUT" || fail "job $JOB did not stop after MAX_RESTARTS=1"
FINAL=$((N2 + 20))
say "      requeued (restart 1), resumed at $N1, preempted at step $N2 (scancel --signal=USR1 --batch); finishing to $FINAL by resubmitting"
# A resubmission with the same RUN_DIR finishes the run from latest.
job=$(ANYK_BIN=$ANYK_BIN DATA_DIR=$TMP/data RUN_DIR=$CUT STEPS=$FINAL SAVE_EVERY=0 KEEP=2 LOG_EVERY=1 EVAL_EVERY=0 \
  EP=2 MODEL_ARGS="$SIG_MODEL" ANYK_SRUN_MPI=$SRUN_MPI REQUEUE=0 \
  timeout 240 sbatch --wait --parsable --job-name=anyk-cut --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=5 \
  --open-mode=append --output="$CUT_OUT" "$ROOT/slurm/train.sbatch") || fail "resubmitted job failed (output $CUT_OUT)"
job=${job%%;*}
[ "$(job_field "$job" JobState)" = COMPLETED ] || fail "resubmitted job $job not COMPLETED"
grep -q "resuming from $CUT/checkpoints/latest (step $N2)" "$CUT_OUT" || fail "resubmitted job did not resume from step $N2"
[ -s "$CUT/model.h5" ] || fail "resubmitted job left no model.h5"
# The uninterrupted reference, same layout.
timeout 300 srun --mpi="$SRUN_MPI" -n 2 --cpu-bind=cores "$ANYK_BIN" train --data "$TMP/data" --run-dir "$TMP/ref" --ep 2 \
  $SIG_MODEL --threads 1 --steps "$FINAL" --log-every 1 --eval-every 0 --save-every 0 >"$TMP/jobs/ref.out" 2>&1 ||
  fail "reference run failed (output $TMP/jobs/ref.out)"
py "$CUT/metrics.jsonl" "$TMP/ref/metrics.jsonl" "$N1" "$N2" "$FINAL" <<'EOF' || fail "the resumed loss sequence differs from the reference"
import json, sys
cut, ref, n1, n2, final = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
def losses(p):
    return [(j["step"], j["loss"]) for j in map(json.loads, open(p)) if j["type"] == "train"]
c, r = losses(cut), losses(ref)
assert [s for s, _ in r] == list(range(1, final + 1)), "reference steps are not 1..final"
assert [s for s, _ in c] == list(range(1, final + 1)), \
    f"stitched run's steps are not 1..{final} exactly once (got {len(c)} entries)"
bad = [(s, a, b) for (s, a), (_, b) in zip(c, r) if a != b]
for s, a, b in bad[:5]:
    print(f"step {s}: stitched {a!r} != reference {b!r}", file=sys.stderr)
assert not bad, f"{len(bad)} of {final} losses differ (first at step {bad[0][0]})"
print(f"slurm_test:       ok: steps 1..{n1} (first job), {n1 + 1}..{n2} (requeued), {n2 + 1}..{final} "
      f"(resubmitted): all {final} losses bit-identical to the uninterrupted run")
EOF

# ---- 4. scaling-study driver on 1 and 2 ranks -------------------------------------------------
say "[4/5] tools/scaling_study.py --ranks 1,2 (strong + weak, serial jobs)"
/usr/bin/python3 "$ROOT/tools/scaling_study.py" --ranks 1,2 --modes strong,weak --serial --ntasks-per-node 2 \
  --cpus-per-task 1 --steps 40 --log-every 5 --batch 4 --time 5 --wait-timeout 300 --out "$TMP/scaling" \
  --anyk-bin "$ANYK_BIN" --data "$TMP/data" \
  --model-args "${MODEL/--batch 4/}" >"$TMP/jobs/scaling.out" 2>&1 || {
  tail -n 30 "$TMP/jobs/scaling.out" >&2
  fail "scaling_study.py failed"
}
py "$TMP/scaling" <<'EOF' || fail "scaling-study outputs are incomplete"
import csv, os, sys
d = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(d, "scaling.csv"))))
got = sorted((r["mode"], int(r["ranks"])) for r in rows)
assert got == [("strong", 1), ("strong", 2), ("weak", 1), ("weak", 2)], got
for r in rows:
    assert r["state"] == "COMPLETED", r
    for k in ("tok_per_s", "step_ms", "compute_ms", "mfu", "efficiency"):
        assert float(r[k]) > 0, (k, r)
    assert int(r["tokens_per_step"]) == 64 * int(r["batch_per_rank"]) * int(r["ranks"]), r
    assert float(r["dispatch_ms"]) > 0 if r["ranks"] == "2" else float(r["dispatch_ms"]) == 0, r
    if r["ranks"] == "1":
        assert abs(float(r["efficiency"]) - 1) < 1e-9, r
md = open(os.path.join(d, "scaling.md")).read()
assert md.count("\n| strong |") == 2 and md.count("\n| weak |") == 2, md
png = os.path.join(d, "scaling.png")
assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10000
eff = {(r["mode"], r["ranks"]): float(r["efficiency"]) for r in rows}
print(f"slurm_test:       ok: 4 runs COMPLETED; efficiency at 2 ranks: strong {eff['strong', '2']:.2f}, "
      f"weak {eff['weak', '2']:.2f} (2 cores: a smoke test, not a measurement); scaling.csv/.md/.png written")
EOF
sed -n '/^| mode/,/^$/p' "$TMP/scaling/scaling.md"

# ---- 5. slurm/train_gpu.sbatch without a GPU: its syntax, its #SBATCH lines, the command it builds
say "[5/5] slurm/train_gpu.sbatch: bash -n, #SBATCH lines, sbatch --test-only, the srun and anyk command lines"
GPU_SCRIPT=$ROOT/slurm/train_gpu.sbatch
bash -n "$GPU_SCRIPT" || fail "bash -n $GPU_SCRIPT: syntax error"
SBATCH_HELP=$(sbatch --help 2>&1)
sbatch_value() { sed -n "s/^#SBATCH --$1=//p" "$GPU_SCRIPT" | head -n 1; }
n_lines=0
while IFS= read -r line; do  # every line: #SBATCH --name or --name=value; GPU options named by sbatch --help
  [[ "$line" =~ ^#SBATCH\ --([a-z-]+)(=[^[:space:]]+)?$ ]] || fail "$GPU_SCRIPT: malformed line '$line'"
  name=${BASH_REMATCH[1]}
  if [[ "$name" == gpu* ]]; then
    grep -qE -- "--$name([=[ ]|$)" <<<"$SBATCH_HELP" || fail "$GPU_SCRIPT: '$line': sbatch --help has no --$name"
  fi
  n_lines=$((n_lines + 1))
done < <(grep '^#SBATCH' "$GPU_SCRIPT")
[ "$(sbatch_value gpus-per-node)" = "$(sbatch_value ntasks-per-node)" ] ||
  fail "$GPU_SCRIPT: --gpus-per-node $(sbatch_value gpus-per-node) != --ntasks-per-node $(sbatch_value ntasks-per-node) (one task per GPU)"
# This cluster has no GPUs: sbatch parses the other lines (an unknown option fails here) with the
# sizes shrunk to fit one small node.
grep -v '^#SBATCH --gpu' "$GPU_SCRIPT" >"$TMP/jobs/train_gpu_nogpu.sbatch"
sbatch --test-only --nodes=1 --ntasks-per-node=1 --cpus-per-task=1 --time=5 "$TMP/jobs/train_gpu_nogpu.sbatch" \
  >"$TMP/jobs/train_gpu_test_only.out" 2>&1 || {
  cat "$TMP/jobs/train_gpu_test_only.out" >&2
  fail "sbatch --test-only rejects $GPU_SCRIPT's #SBATCH lines (GPU lines left out)"
}
# The commands it builds, with stand-ins for srun and anyk that record their arguments.
mkdir -p "$TMP/fake/bin" "$TMP/fake/build"
echo "ANYK_CUDA:BOOL=ON" >"$TMP/fake/build/CMakeCache.txt"
printf '#!/bin/sh\necho "$*" >"%s/fake/anyk.args"\n' "$TMP" >"$TMP/fake/build/anyk"
cat >"$TMP/fake/bin/srun" <<EOF
#!/bin/bash
echo "\$*" >"$TMP/fake/srun.args"
while [ \$# -gt 0 ] && [ "\$1" != "$TMP/fake/build/anyk" ]; do shift; done
exec "\$@"
EOF
chmod +x "$TMP/fake/build/anyk" "$TMP/fake/bin/srun"
for bind in local task; do
  rm -f "$TMP/fake/"*.args
  (cd "$ROOT" && env -u SLURM_JOB_ID -u SLURM_NTASKS PATH="$TMP/fake/bin:$PATH" ANYK_BIN="$TMP/fake/build/anyk" \
    DATA_DIR="$TMP/data" RUN_DIR="$TMP/fake/run_$bind" STEPS=3 ANYK_SRUN_MPI=pmix GPU_BIND=$bind \
    bash "$GPU_SCRIPT") >"$TMP/jobs/train_gpu_$bind.out" 2>&1 || {
    cat "$TMP/jobs/train_gpu_$bind.out" >&2
    fail "train_gpu.sbatch (GPU_BIND=$bind, stand-in srun and anyk) failed"
  }
  grep -q -- "train .*--device cuda --comm nccl" "$TMP/fake/anyk.args" 2>/dev/null ||
    fail "train_gpu.sbatch (GPU_BIND=$bind) did not run anyk train with --device cuda --comm nccl: $(cat "$TMP/fake/anyk.args" 2>/dev/null)"
  want="--cpu-bind=cores"
  [ "$bind" = task ] && want="--gpus-per-task=1 --gpu-bind=closest"
  grep -q -- "$want" "$TMP/fake/srun.args" || fail "train_gpu.sbatch (GPU_BIND=$bind): srun lacks '$want': $(cat "$TMP/fake/srun.args")"
done
echo "ANYK_CUDA:BOOL=OFF" >"$TMP/fake/build/CMakeCache.txt"
if (cd "$ROOT" && ANYK_BIN="$TMP/fake/build/anyk" bash "$GPU_SCRIPT") >"$TMP/jobs/train_gpu_cpu.out" 2>&1 ||
  ! grep -q "built without CUDA" "$TMP/jobs/train_gpu_cpu.out"; then
  fail "train_gpu.sbatch did not refuse a build without CUDA: $(cat "$TMP/jobs/train_gpu_cpu.out")"
fi
say "      ok: $n_lines #SBATCH lines (the GPU ones in sbatch --help), $(sbatch_value gpus-per-node) GPUs = tasks per node, accepted by --test-only; srun + anyk train --device cuda --comm nccl (GPU_BIND local and task); a CPU build refused"

say "PASS: srun, sbatch (srun + mpirun), signal/requeue/resume, the scaling study and the GPU script's checks, in $(elapsed)"
