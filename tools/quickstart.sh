#!/usr/bin/env bash
# The main job, from a fresh Debian machine: install missing packages, build, prepare the
# `fortunes` corpus, train a small elastic (M-MoE, layer-wise K in [1,4], E = 8) model on 2 MPI
# ranks with expert parallelism, and print the K-sweep table. Settings can be overridden:
#   STEPS=3000 RANKS=4 RUN_DIR=runs/mine bash tools/quickstart.sh [extra anyk train flags]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1200}
RANKS=${RANKS:-2}
RUN_DIR=${RUN_DIR:-runs/quickstart}
DATA_DIR=${DATA_DIR:-data_cache/fortunes}

t0=$SECONDS
bash tools/deps.sh
t1=$SECONDS
# Only the `anyk` executable: the main job needs nothing else (tools/build.sh alone builds the tests too).
BUILD_TARGETS=anyk bash tools/build.sh
t2=$SECONDS
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

if [ ! -f "$DATA_DIR/train.bin" ] || [ ! -f "$DATA_DIR/val.bin" ]; then
  build/anyk prepare --input /usr/share/games/fortunes --out "$DATA_DIR"
fi
# A finished run in RUN_DIR is moved aside to RUN_DIR.overwritten-<time> (never deleted). A
# Ctrl-C ends with a checkpoint: mpirun gives the ranks 60 s (its default is 1 s).
OVERWRITE=()
if [ -d "$RUN_DIR" ]; then OVERWRITE=(--overwrite); fi
mpirun -np "$RANKS" --oversubscribe --bind-to none --mca odls_base_sigkill_timeout 60 build/anyk train \
  --data "$DATA_DIR" --run-dir "$RUN_DIR" --ep "$RANKS" "${OVERWRITE[@]}" \
  --k-strategy layer --experts 8 --k-min 1 --k-max 4 \
  --layers 4 --dim 128 --heads 4 --expert-hidden 128 --seq-len 128 --batch 8 \
  --steps "$STEPS" --log-every 50 --eval-every 400 --eval-windows 64 "$@"
t3=$SECONDS
echo
echo "quickstart: time: install $((t1 - t0)) s, build $((t2 - t1)) s, train $((t3 - t2)) s (data included)," \
  "total $((t3 - t0)) s; load average now $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo "Run directory: $RUN_DIR (train.log, metrics.jsonl, config.ini, model.h5, sweep.json)"
echo "Evaluate other settings:  build/anyk eval --run-dir $RUN_DIR --data $DATA_DIR --layer-k 4,3,2,1"
