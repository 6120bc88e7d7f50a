#!/usr/bin/env bash
# `cmake --install` end to end (ctest: install_relocated). Installs BUILD_DIR into a temporary
# prefix, moves the prefix elsewhere, and checks the moved copy: RUNPATH only relative ($ORIGIN)
# or outside the build and install trees, every libanyk_* resolved inside the moved prefix, the
# installed `anyk --version`, `anyk prepare` and a 2-step `anyk train` run, and a consumer project
# built with find_package(anyk) against the moved prefix only (no source or build tree on its
# include path) runs and prints what `anyk --version` prints.
# Usage: tools/install_test.sh BUILD_DIR C_COMPILER CXX_COMPILER
set -euo pipefail
build=$(cd "$1" && pwd)
cc=$2
cxx=$3
src=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/anyk-install-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "install_test: FAIL: $*" >&2
  exit 1
}

cmake --install "$build" --prefix "$tmp/first" >"$tmp/install.log" || { cat "$tmp/install.log"; fail "cmake --install"; }
mv "$tmp/first" "$tmp/moved"
p=$tmp/moved
[[ -x $p/bin/anyk ]] || fail "no bin/anyk"
for f in "$p"/include/anyk/launch/cli.h "$p"/lib*/cmake/anyk/anyk-config.cmake \
  "$p"/lib*/cmake/anyk/anyk-config-version.cmake "$p"/lib*/cmake/anyk/anyk-targets.cmake; do
  [[ -f $f ]] || fail "missing $f"
done
libdir=$(dirname "$(ls "$p"/lib*/libanyk_launch.so)")

# RUNPATH: $ORIGIN-relative, never the build tree or the first install prefix.
for f in "$p/bin/anyk" "$libdir"/libanyk_*.so; do
  rp=$(readelf -d "$f" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p; s/.*(RPATH).*\[\(.*\)\]/\1/p')
  [[ $rp == *'$ORIGIN'* ]] || fail "$f: RUNPATH '$rp' has no \$ORIGIN"
  [[ $rp != *"$build"* && $rp != *"$tmp/first"* && $rp != *"$src"* ]] || fail "$f: RUNPATH '$rp' names the build, source or install tree"
done
# Every anyk library the moved binary loads comes from the moved prefix.
deps=$(env -u LD_LIBRARY_PATH ldd "$p/bin/anyk")
if grep -q 'not found' <<<"$deps"; then fail "unresolved libraries: $(grep 'not found' <<<"$deps")"; fi
n=0
while read -r lib _ path _; do
  [[ $(dirname "$(realpath "$path")") == "$(realpath "$libdir")" ]] || fail "$lib loaded from $path, not $libdir"
  n=$((n + 1))
done < <(grep 'libanyk_' <<<"$deps")
installed=$(ls "$libdir"/libanyk_*.so | wc -l)
((n == installed)) || fail "$installed libanyk_* installed, ldd shows $n loaded: $deps"

# The moved anyk runs.
env -u LD_LIBRARY_PATH "$p/bin/anyk" --version >"$tmp/version.txt" || fail "anyk --version exited $?"
grep -q '^anyk [0-9]' "$tmp/version.txt" || fail "anyk --version: no version line: $(cat "$tmp/version.txt")"
for key in commit compiler isa cuda; do
  grep -q "^$key: " "$tmp/version.txt" || fail "anyk --version has no '$key:' line"
done
mkdir "$tmp/text"
for i in $(seq 1 300); do echo "line $i of a tiny corpus: the quick brown fox jumps over the lazy dog"; done >"$tmp/text/a.txt"
env -u LD_LIBRARY_PATH "$p/bin/anyk" prepare --input "$tmp/text" --out "$tmp/data" >"$tmp/prepare.log" || fail "anyk prepare"
[[ -s $tmp/data/train.bin && -s $tmp/data/val.bin ]] || fail "anyk prepare wrote no shards"
env -u LD_LIBRARY_PATH OMP_NUM_THREADS=1 "$p/bin/anyk" train --data "$tmp/data" --run-dir "$tmp/run" --steps 2 \
  --layers 1 --dim 16 --heads 2 --experts 4 --expert-hidden 16 --seq-len 16 --batch 2 --warmup 0 --threads 1 \
  >"$tmp/train.log" 2>&1 || { cat "$tmp/train.log"; fail "anyk train"; }
[[ -e $tmp/run/checkpoints/latest ]] || fail "anyk train left no checkpoint"

# A consumer project: find_package(anyk) from the moved prefix, the build's compilers.
mkdir "$tmp/consumer"
cat >"$tmp/consumer/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(anyk_consumer LANGUAGES CXX)
find_package(anyk 0.1 REQUIRED)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE anyk::anyk_launch)
CMAKE
cat >"$tmp/consumer/main.cpp" <<'CPP'
// Prints what `anyk --version` prints, then runs `anyk prepare` through the library.
#include <cstdio>
#include "launch/cli.h"
#include "launch/version.h"
int main(int argc, char** argv) {
  std::fputs(anyk::launch::version_text().c_str(), stdout);
  return anyk::run_cli(argc, argv);
}
CPP
cmake -S "$tmp/consumer" -B "$tmp/consumer/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$p" \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  >"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "consumer configure"; }
cmake --build "$tmp/consumer/build" >>"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "consumer build"; }
if grep -q -e "$src" -e "$build" "$tmp/consumer/build/compile_commands.json"; then
  fail "the consumer compiles against the source or build tree: $(cat "$tmp/consumer/build/compile_commands.json")"
fi
"$tmp/consumer/build/consumer" prepare --input "$tmp/text" --out "$tmp/data2" >"$tmp/consumer.out" || fail "consumer exited $?"
head -n "$(wc -l <"$tmp/version.txt")" "$tmp/consumer.out" | cmp -s - "$tmp/version.txt" ||
  fail "consumer's version text differs from anyk --version"
cmp -s "$tmp/data/train.bin" "$tmp/data2/train.bin" || fail "consumer's prepare wrote a different train.bin"
echo "install_test: ok: installed, moved to $p, anyk --version/prepare/train ran, consumer built and ran"
