#!/usr/bin/env bash
# Builds anyk with clang, AddressSanitizer + UndefinedBehaviorSanitizer in build-asan/ (-O2
# -gline-tables-only, frame pointers kept) and runs every ctest suite (unit and MPI) under them.
# Any sanitizer report fails its test; the script exits non-zero on any failure. Extra arguments
# go to ctest (e.g. -R optim). Third-party leaks (OpenMPI and the hwloc/libevent it uses) are
# suppressed by tools/sanitizers/lsan.supp; nothing else is. See docs/sanitizers.md.
# build-asan/ is also configured with -DANYK_FUZZ=ON, so the libFuzzer harnesses are built from
# the same objects (`FUZZ_BUILD_DIR=build-asan bash tools/fuzz.sh smoke`, as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
supp=$root/tools/sanitizers
jobs=${JOBS:-$(nproc)}
bash tools/clang_deps.sh
bash tools/deps.sh

# clang, not GCC: with ASan + UBSan, GCC 12 took 2.5-3x longer to compile the same files
# (kernels/cpu/attention.cpp 143 s against 49 s), which was most of CI's time. -O2: at -O1 Eigen is
# barely inlined and `anyk train` runs about 20x slower than Release, which the suites that train
# through the binary cannot afford in CI; ASan and UBSan report the same errors at -O2.
# A build-asan/ configured with another compiler (GCC, before this change) is reconfigured.
if [ -f build-asan/CMakeCache.txt ] && ! grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=.*clang++' build-asan/CMakeCache.txt; then
  rm -rf build-asan/CMakeCache.txt build-asan/CMakeFiles
fi
CC=clang CXX=clang++ cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DANYK_SANITIZE=address,undefined \
  -DANYK_FUZZ=ON "-DCMAKE_CXX_FLAGS_DEBUG=-O2 -gline-tables-only" "-DCMAKE_C_FLAGS_DEBUG=-O2 -gline-tables-only" >/dev/null

# A report ends the process with a non-zero status (exitcode), which ctest (or mpiexec, for the
# MPI suites and the anyk subprocesses, which inherit this environment on one node) turns into a
# failed test. fast_unwind_on_malloc=0: OpenMPI and its plugins have no frame pointers, so only
# the slow unwinder gives leak stacks that reach a module the suppressions can name.
# intercept_tls_get_addr=0: GCC 12's LeakSanitizer misreads glibc >= 2.25 dynamic TLS blocks and
# its tracer segfaults at exit ("Tracer caught signal 11"; google/sanitizers#1322).
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=86:fast_unwind_on_malloc=0:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=0:intercept_tls_get_addr=0"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87"
# OpenMPI and PMIx unload their plugins in MPI_Finalize, before LeakSanitizer runs at exit; keep
# them loaded so leak stacks through them still name a module.
export OMPI_MCA_mca_base_component_disable_dlclose=1 PMIX_MCA_mca_base_component_disable_dlclose=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# By default two end-to-end suites are left out: test_layouts (600-step np=2 runs, compared loss
# for loss) and test_train (hundreds of steps to memorise a text). Their code paths (the trainer,
# the dispatcher, checkpoints) run under the sanitizers in test_checkpoint, test_reliability,
# test_cli and the MPI dispatcher suites with far fewer steps. Pass ctest arguments to choose
# otherwise (e.g. `bash tools/sanitize.sh -R layouts`). The fuzz harnesses' corpus replays
# (fuzz_*_corpus) are left to tools/fuzz.sh, which builds the harnesses and replays the corpus.
# The GPU suites (test_gpu_*) are left out too: without a GPU they only print "no CUDA device
# visible" and exit 77, and their ASan compile cost about a minute of CI.
skip='^(test_layouts|test_train|test_gpu_.*|fuzz_.*_corpus)$'
if (($# == 0)); then set -- -E "$skip"; fi
# Only what ctest runs (anyk and the test suites), not the benches; with the default selection
# the skipped suites are not built either (they cost CI minutes of ASan compile for nothing).
targets=(anyk)
for t in tests/test_*.cpp; do
  name=$(basename "$t" .cpp)
  if [ "$*" = "-E $skip" ] && [[ $name =~ $skip ]]; then continue; fi
  targets+=("$name")
done
cmake --build build-asan -j "$jobs" --target "${targets[@]}"
ctest --test-dir build-asan --output-on-failure --timeout 900 -j "$jobs" "$@"
