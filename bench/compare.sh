#!/bin/sh
# anyk vs PyTorch peer tokens/s; see bench/compare.py --help. Installs the peer's Debian
# packages if missing (python3-torch, and OpenBLAS's OpenMP build so torch does not fall back to
# the reference BLAS).
set -e
missing=""
for p in python3-torch libopenblas0-openmp; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $missing
fi
exec /usr/bin/python3 "$(dirname "$0")/compare.py" "$@"
