// The instruction-set check at start-up: the CPU code is compiled for one x86-64 baseline
// (ANYK_ARCH in CMakeLists.txt, x86-64-v3 unless configured otherwise), and a CPU without one of
// its extensions would die with SIGILL somewhere in the first kernel. libanyk_kernels runs
// check_cpu_or_exit() before any other code of the library (a priority-101 constructor), so such
// a CPU gets one line naming the missing extension instead. See "Portable builds" in docs/design.md.
#pragma once

namespace anyk::kernels {

// The -march this build was configured with ("x86-64-v3", "native", ...; "default" when none).
const char* compiled_isa();

// The extensions the compiler targeted (from its __AVX2__, __FMA__, ... macros) that can be asked
// of the CPU, in the order checked, ending with nullptr. Empty (just nullptr) off x86-64.
const char* const* compiled_cpu_features();

// The first extension of compiled_cpu_features() for which `has` returns false, or nullptr.
const char* first_missing_cpu_feature(bool (*has)(const char* feature));

// Whether this CPU has `feature` (one of compiled_cpu_features()), by __builtin_cpu_supports.
bool cpu_has_feature(const char* feature);

// One line (no newline) for a CPU without `feature`: what is missing, what the build needs, the fix.
// Writes at most `size` bytes into `buf` and returns it.
const char* missing_cpu_feature_message(const char* feature, char* buf, unsigned long size);

// Stops the process (exit status 2) with missing_cpu_feature_message() on stderr when this CPU
// lacks an extension the build was compiled for. ANYK_TEST_CPU_MISSING=<feature> makes it act as
// if the CPU lacked that feature (for tests: only a feature the build targets counts).
void check_cpu_or_exit();

}  // namespace anyk::kernels
