// The start-up instruction-set check (kernels/cpu_features.h). Everything on the path of the
// check is compiled for plain x86-64 (GCC's target attribute), so it runs on any x86-64 CPU even
// when the rest of the file, and the library, use AVX2 or AVX-512.
#include "kernels/cpu_features.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

#ifndef ANYK_ISA
#define ANYK_ISA "default"
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ANYK_BASELINE __attribute__((target("arch=x86-64")))
#else
#define ANYK_BASELINE
#endif

namespace anyk::kernels {

namespace {

// What the compiler was told it may use, as __builtin_cpu_supports names. Extensions that
// clang's __builtin_cpu_supports does not know are checked in GCC builds only.
constexpr const char* kCompiled[] = {
#if defined(__x86_64__)
#ifdef __SSE3__
    "sse3",
#endif
#ifdef __SSSE3__
    "ssse3",
#endif
#ifdef __SSE4_1__
    "sse4.1",
#endif
#ifdef __SSE4_2__
    "sse4.2",
#endif
#ifdef __POPCNT__
    "popcnt",
#endif
#ifdef __AVX__
    "avx",
#endif
#ifdef __AVX2__
    "avx2",
#endif
#ifdef __FMA__
    "fma",
#endif
#ifdef __BMI__
    "bmi",
#endif
#ifdef __BMI2__
    "bmi2",
#endif
#ifdef __AES__
    "aes",
#endif
#ifdef __PCLMUL__
    "pclmul",
#endif
#ifdef __GFNI__
    "gfni",
#endif
#ifdef __VPCLMULQDQ__
    "vpclmulqdq",
#endif
#ifdef __SSE4A__
    "sse4a",
#endif
#ifdef __AVX512F__
    "avx512f",
#endif
#ifdef __AVX512DQ__
    "avx512dq",
#endif
#ifdef __AVX512CD__
    "avx512cd",
#endif
#ifdef __AVX512BW__
    "avx512bw",
#endif
#ifdef __AVX512VL__
    "avx512vl",
#endif
#ifdef __AVX512IFMA__
    "avx512ifma",
#endif
#ifdef __AVX512VBMI__
    "avx512vbmi",
#endif
#ifdef __AVX512VBMI2__
    "avx512vbmi2",
#endif
#ifdef __AVX512VNNI__
    "avx512vnni",
#endif
#ifdef __AVX512BITALG__
    "avx512bitalg",
#endif
#ifdef __AVX512VPOPCNTDQ__
    "avx512vpopcntdq",
#endif
#ifdef __AVX512BF16__
    "avx512bf16",
#endif
#if !defined(__clang__)
#ifdef __F16C__
    "f16c",
#endif
#ifdef __LZCNT__
    "lzcnt",
#endif
#ifdef __MOVBE__
    "movbe",
#endif
#ifdef __ADX__
    "adx",
#endif
#ifdef __SHA__
    "sha",
#endif
#ifdef __VAES__
    "vaes",
#endif
#ifdef __AVX512FP16__
    "avx512fp16",
#endif
#ifdef __AVXVNNI__
    "avxvnni",
#endif
#endif  // !__clang__
#endif  // __x86_64__
    nullptr};

}  // namespace

const char* compiled_isa() { return ANYK_ISA; }

const char* const* compiled_cpu_features() { return kCompiled; }

ANYK_BASELINE const char* first_missing_cpu_feature(bool (*has)(const char* feature)) {
  for (const char* const* f = kCompiled; *f; ++f)
    if (!has(*f)) return *f;
  return nullptr;
}

ANYK_BASELINE bool cpu_has_feature(const char* f) {
#if defined(__x86_64__)
  __builtin_cpu_init();
#define ANYK_FEATURE(name) \
  if (std::strcmp(f, name) == 0) return __builtin_cpu_supports(name) != 0;
  ANYK_FEATURE("sse3") ANYK_FEATURE("ssse3") ANYK_FEATURE("sse4.1") ANYK_FEATURE("sse4.2")
  ANYK_FEATURE("popcnt") ANYK_FEATURE("avx") ANYK_FEATURE("avx2") ANYK_FEATURE("fma")
  ANYK_FEATURE("bmi") ANYK_FEATURE("bmi2") ANYK_FEATURE("aes") ANYK_FEATURE("pclmul")
  ANYK_FEATURE("sse4a") ANYK_FEATURE("gfni") ANYK_FEATURE("vpclmulqdq") ANYK_FEATURE("avx512f") ANYK_FEATURE("avx512dq")
  ANYK_FEATURE("avx512cd") ANYK_FEATURE("avx512bw") ANYK_FEATURE("avx512vl")
  ANYK_FEATURE("avx512ifma") ANYK_FEATURE("avx512vbmi") ANYK_FEATURE("avx512vbmi2")
  ANYK_FEATURE("avx512vnni") ANYK_FEATURE("avx512bitalg") ANYK_FEATURE("avx512vpopcntdq")
  ANYK_FEATURE("avx512bf16")
#if !defined(__clang__)
  ANYK_FEATURE("f16c") ANYK_FEATURE("lzcnt") ANYK_FEATURE("movbe") ANYK_FEATURE("adx")
  ANYK_FEATURE("sha") ANYK_FEATURE("vaes") ANYK_FEATURE("avx512fp16") ANYK_FEATURE("avxvnni")
#endif
#undef ANYK_FEATURE
#endif
  return false;  // a name this check does not know: not a feature of this build
}

ANYK_BASELINE const char* missing_cpu_feature_message(const char* feature, char* buf, unsigned long size) {
  std::snprintf(buf, size,
                "anyk: error: this CPU lacks %s, which this build of anyk was compiled for "
                "(-march=%s) hint: run it on a CPU with %s, or rebuild on this machine with "
                "-DANYK_ARCH=x86-64-v2 (or -DANYK_NATIVE=ON)",
                feature, ANYK_ISA, feature);
  return buf;
}

namespace {

ANYK_BASELINE bool has_unless_pretended(const char* feature) {
  const char* pretend = std::getenv("ANYK_TEST_CPU_MISSING");
  if (pretend && std::strcmp(pretend, feature) == 0) return false;
  return cpu_has_feature(feature);
}

}  // namespace

ANYK_BASELINE void check_cpu_or_exit() {
  const char* missing = first_missing_cpu_feature(has_unless_pretended);
  if (!missing) return;
  char line[512];
  std::fputs(missing_cpu_feature_message(missing, line, sizeof line), stderr);
  std::fputs("\n", stderr);
  _exit(2);
}

namespace {

// Before every other initialiser of this library; the libraries above it initialise after it.
ANYK_BASELINE __attribute__((constructor(101))) void check_cpu_at_load() { check_cpu_or_exit(); }

}  // namespace

}  // namespace anyk::kernels
