#!/usr/bin/env bash
# Installs clang, its sanitizer/libFuzzer runtimes (libclang-rt-dev) and clang's OpenMP (libomp-dev)
# with apt-get, only when one is missing. Used by tools/sanitize.sh and tools/fuzz.sh.
set -euo pipefail
if command -v clang++ >/dev/null &&
  ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 &&
  ls /usr/lib/llvm-*/lib/libomp.so >/dev/null 2>&1; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
echo "anyk: installing clang, libclang-rt-dev and libomp-dev"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clang libclang-rt-dev libomp-dev >/dev/null
