#!/usr/bin/env bash
# libFuzzer harnesses (tests/fuzz/, docs/fuzzing.md) with ASan + UBSan, built with clang in their
# own directory build-fuzz/ (-DANYK_FUZZ=ON; only the harnesses and what they link are built), or,
# with FUZZ_BUILD_DIR=DIR, in a directory already configured with -DANYK_FUZZ=ON (CI reuses
# tools/sanitize.sh's build-asan/, which is configured so).
#
#   tools/fuzz.sh smoke            replay the committed corpus through every harness, then fuzz
#                                  each one for FUZZ_SECONDS (default 15) seconds (what CI runs)
#   tools/fuzz.sh long N [NAME..]  run each harness (or the named ones) for N executions, one
#                                  process each, and append to build-fuzz/fuzz-long-summary.txt;
#                                  FUZZ_MAX_SECONDS=S stops each one after S seconds instead
#   tools/fuzz.sh rate S [NAME..]  fuzz each harness (or the named ones) for S seconds from the
#                                  committed corpus only (fresh corpus dir, so runs compare) and
#                                  print executions, exec/s, CPU seconds, exec per CPU-second and the
#                                  load average; appended to <build dir>/fuzz-rate-summary.txt
#   tools/fuzz.sh campaign NAME N  fuzz one harness until it has run N executions in total over
#                                  <build dir>/corpus/NAME, in as many runs as it takes (each run
#                                  continues from the corpus the earlier ones left); every run is a
#                                  line in <build dir>/campaign/NAME.ledger (executions, CPU s, wall s,
#                                  load, commit, date), so a stopped campaign resumes where it was.
#                                  FUZZ_MAX_SECONDS=S ends each run after S seconds (then rerun the
#                                  command to go on). Prints the totals. Not part of CI.
#
# Fresh inputs go to <build dir>/corpus/<name>/ (the committed corpus is only read); a crash,
# leak, sanitizer report, timeout or over-limit allocation leaves its input in
# <build dir>/artifacts/<name>/ and makes the script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bdir=$(realpath -m "${FUZZ_BUILD_DIR:-$root/build-fuzz}")
harnesses=(fuzz_shard fuzz_ini fuzz_checkpoint fuzz_prepare fuzz_weights)

mode=${1:-}
case "$mode" in
  smoke) ;;
  long)
    runs=${2:?usage: tools/fuzz.sh long N [harness...]}
    shift 2
    if (($#)); then harnesses=("$@"); fi
    ;;
  rate)
    rate_secs=${2:?usage: tools/fuzz.sh rate SECONDS [harness...]}
    shift 2
    if (($#)); then harnesses=("$@"); fi
    ;;
  campaign)
    harnesses=("${2:?usage: tools/fuzz.sh campaign HARNESS EXECUTIONS}")
    goal=${3:?usage: tools/fuzz.sh campaign HARNESS EXECUTIONS}
    ;;
  *)
    echo "usage: tools/fuzz.sh smoke | tools/fuzz.sh long N [harness...] | tools/fuzz.sh rate SECONDS [harness...]" \
      "| tools/fuzz.sh campaign HARNESS EXECUTIONS" >&2
    exit 2
    ;;
esac

bash tools/clang_deps.sh
bash tools/deps.sh

jobs=${JOBS:-$(nproc)}
# One configure + build at a time per build directory (two campaigns started together would race on
# the same outputs); the lock is released before any harness runs.
mkdir -p "$bdir"
exec 9<"$bdir"
flock 9
if [ -n "${FUZZ_BUILD_DIR:-}" ]; then
  # A build directory configured elsewhere with -DANYK_FUZZ=ON (CI: tools/sanitize.sh's build-asan,
  # clang with ASan + UBSan), so the libraries are not compiled a second time.
  if ! grep -q '^ANYK_FUZZ:BOOL=ON' "$bdir/CMakeCache.txt" 2>/dev/null; then
    echo "tools/fuzz.sh: FUZZ_BUILD_DIR=$bdir is not a build directory configured with -DANYK_FUZZ=ON" \
      "(run tools/sanitize.sh first, or unset FUZZ_BUILD_DIR to use build-fuzz/)" >&2
    exit 2
  fi
else
  CC=clang CXX=clang++ cmake -S . -B "$bdir" -DANYK_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" >/dev/null
fi
cmake --build "$bdir" -j "$jobs" --target "${harnesses[@]}"
flock -u 9
exec 9<&-

export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=0"
export LSAN_OPTIONS="suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

# Per-harness libFuzzer options: input size cap and dictionary.
opts_for() {
  local name=$1
  case "$name" in
    fuzz_shard) echo "-max_len=4096" ;;
    fuzz_ini) echo "-max_len=4096 -dict=$root/tests/fuzz/ini.dict" ;;
    fuzz_prepare) echo "-max_len=8192" ;;
    fuzz_checkpoint)
      local seed=$root/tests/fuzz/corpus/fuzz_checkpoint/seed
      echo "-max_len=$(($(stat -c %s "$seed") + 1024))"
      ;;
    fuzz_weights) echo "-max_len=$(($(stat -c %s "$root/tests/fuzz/corpus/fuzz_weights/seed") + 1024))" ;;
  esac
}
# Limits shared by every run: 10 s per input is a hang, 512 MiB in one malloc is an allocation
# sized from the input (every legitimate one here is a few KiB).
common="-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1"

run_one() {  # name log extra-args...
  local name=$1 log=$2
  shift 2
  local art=$bdir/artifacts/$name/ corpus=$bdir/corpus/$name
  mkdir -p "$art" "$corpus"
  # shellcheck disable=SC2046
  if ! "$bdir/tests/fuzz/$name" $(opts_for "$name") $common -artifact_prefix="$art" "$@" >"$log" 2>&1; then
    echo "FAIL: $name (log: $log; reproducer in $art)" >&2
    grep -E "ERROR|SUMMARY|runtime error|Test unit written|==[0-9]+==" "$log" | head -20 >&2 || true
    return 1
  fi
}

# "Done N runs in S second(s)" -> "N S"
done_line() { sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 \2/p' "$1" | tail -1; }

status=0
mkdir -p "$bdir/logs"
if [ "$mode" = smoke ]; then
  secs=${FUZZ_SECONDS:-15}
  for name in "${harnesses[@]}"; do
    src=$root/tests/fuzz/corpus/$name
    log=$bdir/logs/$name-replay.log
    mapfile -t files < <(find "$src" -type f | sort)
    if run_one "$name" "$log" "${files[@]}"; then  # files as arguments: each run once, none written
      echo "replay $name: ${#files[@]} corpus inputs OK"
    else
      status=1
      continue
    fi
    log=$bdir/logs/$name-smoke.log
    if run_one "$name" "$log" -max_total_time="$secs" "$bdir/corpus/$name" "$src"; then
      read -r n s <<<"$(done_line "$log")"
      echo "fuzz   $name: ${n:-?} executions in ${s:-?} s, no finding"
    else
      status=1
    fi
  done
elif [ "$mode" = rate ]; then
  # Wall-clock exec/s depends on the machine's load; exec per CPU-second (user + sys of the fuzzer
  # process, from /proc/<pid>/stat via GNU time) is the figure that compares across runs.
  summary=$bdir/fuzz-rate-summary.txt
  for name in "${harnesses[@]}"; do
    log=$bdir/logs/$name-rate.log
    mkdir -p "$bdir/corpus" "$bdir/artifacts/$name"
    fresh=$(mktemp -d "$bdir/corpus/$name-rate.XXXXXX")
    load0=$(cut -d' ' -f1 /proc/loadavg)
    if ! /usr/bin/time -f "%U %S %e" -o "$log.time" \
        "$bdir/tests/fuzz/$name" $(opts_for "$name") $common -artifact_prefix="$bdir/artifacts/$name/" \
        -max_total_time="$rate_secs" "$fresh" "$root/tests/fuzz/corpus/$name" >"$log" 2>&1; then
      echo "FAIL: $name (log: $log)" >&2
      status=1
    fi
    rm -rf "$fresh"
    load1=$(cut -d' ' -f1 /proc/loadavg)
    read -r n s <<<"$(done_line "$log")"
    read -r u sy wall <<<"$(tail -1 "$log.time")"
    line=$(awk -v name="$name" -v n="${n:-0}" -v u="$u" -v sy="$sy" -v w="$wall" -v l0="$load0" -v l1="$load1" \
      -v np="$(nproc --all)" -v c="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" -v d="$(date -u +%FT%TZ)" \
      'BEGIN { printf("%s: %d executions in %.0f s wall, %.0f exec/s; %.1f CPU s, %.0f exec per CPU-second; " \
                      "load %s -> %s, nproc %s; %s %s", name, n, w, (w > 0 ? n / w : 0), u + sy,
                      (u + sy > 0 ? n / (u + sy) : 0), l0, l1, np, c, d) }')
    echo "$line" | tee -a "$summary"
  done
elif [ "$mode" = campaign ]; then
  name=${harnesses[0]}
  mkdir -p "$bdir/campaign"
  ledger=$bdir/campaign/$name.ledger
  # Ledger line: executions cpu_s wall_s load_start load_end commit date_start note. The totals are
  # summed over every line; a run stopped by a signal (libFuzzer exits 72) still counts what it ran.
  totals() { awk '!/^#/ { n += $1; c += $2; w += $3 } END { printf("%d %.1f %.0f", n, c, w) }' "$ledger" 2>/dev/null || echo "0 0 0"; }
  [ -f "$ledger" ] || echo "# executions cpu_s wall_s load_start load_end commit date_start note" >"$ledger"
  while :; do
    read -r done_n _ _ <<<"$(totals)"
    left=$((goal - done_n))
    ((left > 0)) || break
    log=$bdir/logs/$name-campaign.log
    cap=()
    if [ -n "${FUZZ_MAX_SECONDS:-}" ]; then cap=(-max_total_time="$FUZZ_MAX_SECONDS"); fi
    art=$bdir/artifacts/$name/ corpus=$bdir/corpus/$name
    mkdir -p "$art" "$corpus"
    load0=$(cut -d' ' -f1 /proc/loadavg) date0=$(date -u +%FT%TZ)
    commit0=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    rc=0
    # shellcheck disable=SC2046
    /usr/bin/time -f "%U %S %e" -o "$log.time" "$bdir/tests/fuzz/$name" $(opts_for "$name") $common \
      -artifact_prefix="$art" -runs="$left" "${cap[@]}" "$corpus" "$root/tests/fuzz/corpus/$name" >"$log" 2>&1 || rc=$?
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    read -r u sy wall <<<"$(grep -E '^[0-9.]+ [0-9.]+ [0-9.]+$' "$log.time" | tail -1)"
    echo "${n:-0} $(awk -v u="${u:-0}" -v s="${sy:-0}" 'BEGIN { printf("%.1f", u + s) }') ${wall:-0} $load0" \
      "$(cut -d' ' -f1 /proc/loadavg) $commit0 $date0 rc=$rc" >>"$ledger"
    if ((rc != 0)); then
      if ((rc == 72)); then echo "campaign $name: stopped by a signal; rerun the command to go on" >&2
      else
        echo "FAIL: $name (log: $log; reproducer in $art)" >&2
        grep -E "ERROR|SUMMARY|runtime error|Test unit written|==[0-9]+==" "$log" | head -20 >&2 || true
      fi
      status=1
      break
    fi
    if [ -z "${n:-}" ] || ((n == 0)); then echo "campaign $name: no executions counted (log: $log)" >&2; status=1; break; fi
    if [ -n "${FUZZ_MAX_SECONDS:-}" ]; then break; fi
  done
  read -r n c w <<<"$(totals)"
  runs=$(grep -vc '^#' "$ledger")
  loads=$(awk '!/^#/ { for (i = 4; i <= 5; ++i) { if (min == "" || $i < min) min = $i; if ($i > max) max = $i } }
               END { printf("%s-%s", min, max) }' "$ledger")
  echo "campaign $name: $n of $goal executions in $runs run(s), $c CPU s, $w s wall," \
    "$(awk -v n="$n" -v c="$c" 'BEGIN { printf("%.0f", c > 0 ? n / c : 0) }') exec per CPU-second," \
    "load average $loads (ledger: $ledger)"
else
  summary=$bdir/fuzz-long-summary.txt
  for name in "${harnesses[@]}"; do
    log=$bdir/logs/$name-long.log
    start=$(date +%s)
    cap=()
    if [ -n "${FUZZ_MAX_SECONDS:-}" ]; then cap=(-max_total_time="$FUZZ_MAX_SECONDS"); fi
    if run_one "$name" "$log" -runs="$runs" "${cap[@]}" "$bdir/corpus/$name" "$root/tests/fuzz/corpus/$name"; then
      result=ok
    else
      result=FAIL
      status=1
    fi
    read -r n s <<<"$(done_line "$log")"
    wall=$(($(date +%s) - start))
    line="$name: $result, ${n:-?} executions in ${s:-?} s (wall ${wall} s, $(awk -v n="${n:-0}" -v s="${s:-0}" \
      'BEGIN { printf("%.0f", (s > 0 ? n / s : 0)) }') exec/s), $(date -u +%FT%TZ)"
    echo "$line" | tee -a "$summary"
  done
fi
exit $status
