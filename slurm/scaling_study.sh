#!/usr/bin/env bash
# Scaling study on Slurm: the same anyk model at several rank counts (strong and weak scaling),
# then a table (CSV + markdown) and a plot of scaling efficiency. A thin wrapper around
# tools/scaling_study.py (run it with --help for every option); settings as variables:
#   RANKS=1,2,4,8,16,32 NTASKS_PER_NODE=8 CPUS_PER_TASK=4 OUT=runs/scaling bash slurm/scaling_study.sh
#   bash slurm/scaling_study.sh --partition-args...   # extra arguments go to the driver
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 tools/scaling_study.py \
  --ranks "${RANKS:-1,2,4,8}" --modes "${MODES:-strong,weak}" --out "${OUT:-runs/scaling}" \
  --ntasks-per-node "${NTASKS_PER_NODE:-4}" --cpus-per-task "${CPUS_PER_TASK:-1}" \
  --steps "${STEPS:-200}" --batch "${BATCH:-8}" --time "${TIME:-00:30:00}" \
  --sbatch-args "${SBATCH_ARGS:-}" "$@"
