#!/usr/bin/env bash
# Peak memory of `mpirun -np 2 anyk train` on a corpus far larger than the ranks' memory goal
# (issue 24, "Done when" bullet 1): makes 4 llm.c-format train shards of 100 M tokens each (800 MB,
# generated here, never committed) plus one val shard, trains a small model on them under
# /usr/bin/time -v, reports each rank's peak RSS against the goal (150 MB; with the old loader,
# which read every token into each rank, the token array alone would be 800 MB per rank), then
# resumes from the middle checkpoint and checks that the resumed run continues bit for bit (the
# same losses to the last digit and the same final weights).
#
# Usage: tools/shard_rss_check.sh [BUILD_DIR] [WORK_DIR]
#   BUILD_DIR holds the anyk binary (default: build); WORK_DIR (default: a new /tmp/anyk-rss.XXXX)
#   is removed at the end unless KEEP=1. TOKENS (default 100000000) sets the tokens per shard,
#   STEPS (default 20) the steps, EXTRA more train options (e.g. EXTRA="--zero 1").
# Exit status: 0 when every rank stays under the goal and the resume is exact, 1 otherwise.
set -euo pipefail

build=${1:-build}
anyk=$(realpath "$build/anyk")
work=${2:-$(mktemp -d /tmp/anyk-rss.XXXX)}
tokens=${TOKENS:-100000000}
steps=${STEPS:-20}
goal_kb=$((150 * 1024))
[[ -x /usr/bin/time ]] || { echo "shard_rss_check: /usr/bin/time is missing (apt-get install time)" >&2; exit 2; }
mkdir -p "$work/data"
cleanup() { [[ "${KEEP:-0}" == 1 ]] || rm -rf "$work"; }
trap cleanup EXIT

# Shards: byte tokens (< 256) of a seeded pseudo-random text, written block by block so that
# making them needs a few MB of memory.
python3 - "$work/data" "$tokens" <<'EOF'
import array, os, random, struct, sys
out, n = sys.argv[1], int(sys.argv[2])
words = [w.encode() for w in ("the expert router sends each token to a few of many small feed forward "
         "networks and learns which of them fit it best while the rest stay idle").split()]
def shard(path, count, seed):
    rng = random.Random(seed)
    header = struct.pack("<256i", 20240520, 1, count, *([0] * 253))
    with open(path + ".tmp", "wb") as f:
        f.write(header)
        left = count
        while left:
            text = b" ".join(rng.choice(words) for _ in range(200000))[: min(left, 1 << 20)]
            text += b"." * (min(left, 1 << 20) - len(text))
            f.write(array.array("H", list(text)).tobytes())
            left -= len(text)
    os.rename(path + ".tmp", path)
for i in range(4):
    shard(os.path.join(out, "train_%06d.bin" % i), n, i)
shard(os.path.join(out, "val_000000.bin"), 1 << 20, 99)
EOF
du -sh "$work/data" | sed 's/^/shard_rss_check: data /'

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
model="--layers 2 --dim 64 --heads 4 --experts 4 --expert-hidden 64 --seq-len 128 --batch 4 --threads 1 \
--log-every 1 --eval-every 0 --eval-windows 8 --seed 5 --steps $steps --save-every $((steps / 2)) ${EXTRA:-}"
# One /usr/bin/time per rank, each writing its own report.
run() {  # run NAME [more train options]
  local name=$1
  shift
  mpirun -np 2 --oversubscribe sh -c '/usr/bin/time -v -o "$0.rank$OMPI_COMM_WORLD_RANK" "$@"' \
    "$work/time.$name" "$anyk" train --data "$work/data" --run-dir "$work/$name" $model "$@" \
    > "$work/$name.out" 2>&1 || { cat "$work/$name.out" >&2; echo "shard_rss_check: $name failed" >&2; exit 1; }
}
run full
run resumed --resume "$work/full/checkpoints/step_$((steps / 2))"

grep -E "^data:|^memory:" "$work/full.out" | sed 's/^/shard_rss_check: /'
status=0
for name in full resumed; do
  for r in 0 1; do
    kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.$name.rank$r")
    verdict=ok
    if ((kb >= goal_kb)); then verdict="OVER the 150 MB goal"; status=1; fi
    printf 'shard_rss_check: %-7s rank %d peak RSS %6.1f MB (%s)\n' "$name" "$r" "$(echo "$kb / 1024" | bc -l)" "$verdict"
  done
done
losses() { grep -o '"step": [0-9]*, "loss": [^,]*' "$1/metrics.jsonl"; }
# The weights' bytes (HDF5 files carry object times, so model.h5 itself differs between runs).
for name in full resumed; do
  "$anyk" convert --checkpoint "$work/$name/model.h5" --to safetensors --out "$work/$name.safetensors" > /dev/null 2>&1 ||
    { echo "shard_rss_check: anyk convert of $name/model.h5 failed" >&2; exit 1; }
done
if diff <(losses "$work/full" | tail -n $((steps / 2))) <(losses "$work/resumed") > /dev/null &&
   cmp -s "$work/full.safetensors" "$work/resumed.safetensors"; then
  echo "shard_rss_check: resume from step $((steps / 2)): the same losses and the same final weights, byte for byte"
else
  echo "shard_rss_check: resume from step $((steps / 2)) DIFFERS from the uninterrupted run" >&2
  diff <(losses "$work/full" | tail -n $((steps / 2))) <(losses "$work/resumed") >&2 || true
  status=1
fi
exit $status
