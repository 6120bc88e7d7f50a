#!/usr/bin/env bash
# Contention benchmark (issue 23): train, eval and generate at 1 and 2 threads, on an idle machine
# and beside a process that keeps one core busy (a shell spin loop this script starts and stops,
# bounded by `timeout`, killed on exit). Prints each figure (median of REPEATS runs) and the
# ratios 2 threads / 1 thread. Goals: with one core busy, 2 threads >= 0.9x 1 thread for all
# three; idle, 2 threads >= 1.7x 1 thread on the C256 training model.
#   ANYK=build/anyk REPEATS=3 bash bench/contention.sh
# Env: ANYK (binary), REPEATS (3), STEPS (12 training steps, the first 3 left out), DATA (a
# prepared data dir; default: fortunes prepared into a temp dir), LIMIT (seconds per run, 120:
# a run cut there reports what it finished), MODEL (training shape flags), BUSY_CMD.
# Train is tokens/s (median over steps), eval is windows/s, generate is new tokens/s.
# The machine's load (uptime) is printed beside each figure: on a shared machine, compare
# only ratios measured in the same run.
set -euo pipefail
ANYK=${ANYK:-build/anyk}
REPEATS=${REPEATS:-3}
STEPS=${STEPS:-12}
LIMIT=${LIMIT:-120}
MODEL=${MODEL:-"--layers 4 --dim 256 --heads 4 --experts 8 --expert-hidden 256 --seq-len 256 --batch 8 --k-strategy layer --k-min 1 --k-max 4"}
WORK=$(mktemp -d /tmp/anyk-contention.XXXXXX)
BUSY_PID=""
stop_busy() {
  if [ -n "$BUSY_PID" ]; then kill "$BUSY_PID" 2>/dev/null || true; wait "$BUSY_PID" 2>/dev/null || true; fi
  BUSY_PID=""
}
cleanup() { stop_busy; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

load() { cut -d' ' -f1 /proc/loadavg; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

DATA=${DATA:-}
if [ -z "$DATA" ]; then
  DATA="$WORK/data"
  "$ANYK" prepare --input /usr/share/games/fortunes --out "$DATA" >/dev/null
fi
# One short run makes the model that eval and generate load.
"$ANYK" train --data "$DATA" --run-dir "$WORK/model" $MODEL --steps 2 --eval-every 0 --eval-windows 2 \
  --threads 2 >/dev/null 2>&1

# Each function prints one figure for `threads`.
train_tps() {
  local t=$1 dir="$WORK/train_$RANDOM"
  timeout "$LIMIT" "$ANYK" train --data "$DATA" --run-dir "$dir" $MODEL --steps "$STEPS" --log-every 1 \
    --eval-every 0 --eval-windows 2 --threads "$t" >/dev/null 2>&1 || true
  python3 - "$dir/metrics.jsonl" <<'EOF'
import json, statistics, sys
try:
    rec = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
except OSError:
    rec = []
tps = [r["tok_per_s"] for r in rec if r.get("type") == "train" and r["step"] > 3]
print(f"{statistics.median(tps):.0f}" if tps else "nan")
EOF
  rm -rf "$dir"
}
eval_wps() {
  local t=$1 n=16 s0 s1
  s0=$(date +%s.%N)
  timeout "$LIMIT" "$ANYK" eval --run-dir "$WORK/model" --data "$DATA" --k 2 --eval-windows $n --threads "$t" \
    >/dev/null 2>&1 || { echo nan; return; }
  s1=$(date +%s.%N)
  python3 -c "print(f'{$n / ($s1 - $s0):.2f}')"
}
gen_tps() {
  local t=$1
  timeout "$LIMIT" "$ANYK" generate --run-dir "$WORK/model" --prompt 'The ' --max-new 128 --k 1 --threads "$t" \
    2>&1 >/dev/null | sed -n 's/.*new tokens at \([0-9.]*\) tok\/s.*/\1/p' | tail -1 | grep . || echo nan
}

declare -A FIG LOADS
measure() {  # measure <idle|busy>
  local cond=$1
  if [ "$cond" = busy ]; then
    timeout $((LIMIT * 20)) sh -c 'while :; do :; done' &
    BUSY_PID=$!
    sleep 1
  fi
  for what in train eval generate; do
    for t in 1 2; do
      local vals="" l=""
      for _ in $(seq "$REPEATS"); do
        case $what in
          train) v=$(train_tps "$t") ;;
          eval) v=$(eval_wps "$t") ;;
          generate) v=$(gen_tps "$t") ;;
        esac
        vals="$vals $v"
        l="$l $(load)"
      done
      FIG[$cond,$what,$t]=$(echo $vals | tr ' ' '\n' | median)
      LOADS[$cond,$what,$t]=$(echo $l | tr ' ' '\n' | median)
      echo "  $cond $what threads=$t: runs$vals -> median ${FIG[$cond,$what,$t]} (load$l)" >&2
    done
  done
  stop_busy
}

echo "anyk: $("$ANYK" --version 2>&1 | head -1)" >&2
echo "model: $MODEL; $REPEATS runs each; $(nproc) cores" >&2
measure idle
measure busy
printf '\n| run | idle 1 thr | idle 2 thr | idle 2/1 | busy 1 thr | busy 2 thr | busy 2/1 | load (median) |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for what in train eval generate; do
  unit=$([ $what = train ] && echo "tok/s" || ([ $what = eval ] && echo "windows/s" || echo "tok/s"))
  ri=$(python3 -c "a,b='${FIG[idle,$what,1]}','${FIG[idle,$what,2]}'; print(f'{float(b)/float(a):.2f}x' if a!='nan' and b!='nan' else 'n/a')")
  rb=$(python3 -c "a,b='${FIG[busy,$what,1]}','${FIG[busy,$what,2]}'; print(f'{float(b)/float(a):.2f}x' if a!='nan' and b!='nan' else 'n/a')")
  printf '| %s (%s) | %s | %s | %s | %s | %s | %s | %s / %s |\n' "$what" "$unit" "${FIG[idle,$what,1]}" \
    "${FIG[idle,$what,2]}" "$ri" "${FIG[busy,$what,1]}" "${FIG[busy,$what,2]}" "$rb" \
    "${LOADS[idle,$what,2]}" "${LOADS[busy,$what,2]}"
done
