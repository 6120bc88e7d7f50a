#!/usr/bin/env bash
# Installs the Debian packages anyk needs, only those missing (apt-get; needs root or sudo).
set -euo pipefail
pkgs=(build-essential cmake pkg-config libeigen3-dev libboost-program-options-dev doctest-dev
      libopenmpi-dev openmpi-bin libhdf5-dev nlohmann-json3-dev libcpp-httplib-dev libsentencepiece-dev fortunes python3
      python3-matplotlib)  # matplotlib: anyk eval --plot (tools/plot_*.py)
pkgs+=(python3-numpy python3-h5py)  # tools/model_spec_check.py (docs/model-spec.md)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "anyk: installing missing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
