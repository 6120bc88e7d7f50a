// The start-up instruction-set check (kernels/cpu_features.h) and `anyk --version`.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu_features.h"
#include "skip.h"
#include "test_util.h"

using anyk::kernels::compiled_cpu_features;
using anyk::kernels::first_missing_cpu_feature;

namespace {

std::vector<std::string> compiled() {
  std::vector<std::string> v;
  for (const char* const* f = compiled_cpu_features(); *f; ++f) v.push_back(*f);
  return v;
}

bool listed(const std::string& f) {
  for (const std::string& c : compiled())
    if (c == f) return true;
  return false;
}

const char* g_absent = nullptr;  // the feature the fake CPU below lacks
bool fake_cpu(const char* f) { return !(g_absent && std::strcmp(f, g_absent) == 0); }

}  // namespace

TEST_CASE("cpu features: the library lists what this suite's compiler flags target") {
  // The suites are compiled with the library's -march, so its macros name the same extensions.
#ifdef __AVX2__
  CHECK(listed("avx2"));
#else
  CHECK_FALSE(listed("avx2"));
#endif
#ifdef __FMA__
  CHECK(listed("fma"));
#else
  CHECK_FALSE(listed("fma"));
#endif
#ifdef __AVX512F__
  CHECK(listed("avx512f"));
#else
  CHECK_FALSE(listed("avx512f"));
#endif
  if (std::string(anyk::kernels::compiled_isa()) == "x86-64-v3") {
    for (const char* f : {"sse4.2", "popcnt", "avx", "avx2", "fma", "bmi", "bmi2"}) CHECK(listed(f));
  }
}

TEST_CASE("cpu features: the first extension the CPU lacks is named, none on this CPU") {
  // This process got here, so the real CPU passed the load-time check, and it agrees.
  CHECK(first_missing_cpu_feature(anyk::kernels::cpu_has_feature) == nullptr);
  g_absent = nullptr;
  CHECK(first_missing_cpu_feature(fake_cpu) == nullptr);
  for (const std::string& f : compiled()) {
    g_absent = f.c_str();
    const char* missing = first_missing_cpu_feature(fake_cpu);
    REQUIRE(missing != nullptr);
    CHECK(std::string(missing) == f);
  }
  g_absent = "avx512fp16-not-compiled";
  CHECK(first_missing_cpu_feature(fake_cpu) == nullptr);  // only what the build targets counts
  CHECK_FALSE(anyk::kernels::cpu_has_feature("no-such-extension"));
}

TEST_CASE("cpu features: a CPU without a compiled-for extension stops at load with one line") {
  const std::vector<std::string> features = compiled();
  if (features.empty()) {
    anyk::test::skip_case("this build targets no extension beyond plain x86-64");
    return;
  }
  const std::string f = features.back();
  anyk::test::RunOptions o;
  o.env = {"ANYK_TEST_CPU_MISSING=" + f};
  anyk::test::RunResult r = anyk::test::run_anyk("--version", o);
  CHECK(r.rc == 2);
  CHECK(r.out.empty());  // stopped before main
  anyk::test::check_one_error_line(r.err, {"this CPU lacks " + f, anyk::kernels::compiled_isa(), "hint:"});
  // A feature the build does not target changes nothing.
  o.env = {"ANYK_TEST_CPU_MISSING=no-such-extension"};
  CHECK(anyk::test::run_anyk("--version", o).rc == 0);
}

TEST_CASE("version: anyk --version names the version, commit, compiler, ISA and CUDA") {
  anyk::test::RunResult r = anyk::test::run_anyk("--version");
  REQUIRE(r.rc == 0);
  CHECK(r.err.empty());
  CHECK(r.out.rfind("anyk 0.", 0) == 0);
  CHECK(anyk::test::count_lines(r.out) == 5);
  for (const char* key : {"\ncommit:   ", "\ncompiler: ", "\nisa:      ", "\ncuda:     "})
    CHECK(r.out.find(key) != std::string::npos);
  CHECK(r.out.find(std::string("isa:      ") + anyk::kernels::compiled_isa()) != std::string::npos);
  for (const std::string& f : compiled()) CHECK(r.out.find(" " + f) != std::string::npos);
  CHECK(r.out.find(anyk::test::run_anyk("version").out) == 0);  // `anyk version` is the same
}
