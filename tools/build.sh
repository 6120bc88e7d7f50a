#!/usr/bin/env bash
# Configures and builds anyk in build/ (Release). Extra arguments go to cmake.
# BUILD_TARGETS="anyk" builds only those targets (default: everything, the tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$(nproc)" ${BUILD_TARGETS:+--target $BUILD_TARGETS}
