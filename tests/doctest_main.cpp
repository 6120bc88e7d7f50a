// The shared doctest main for every test executable. A case that called anyk::test::skip_case
// (tests/skip.h) makes the run exit 77 when nothing failed, after listing what was skipped and
// why: ctest reports the suite as skipped (SKIP_RETURN_CODE 77), never as passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "skip.h"

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int rc = context.run();
  if (context.shouldExit() || rc != 0) return rc;
  const auto& skipped = anyk::test::skipped_cases();
  if (skipped.empty()) return 0;
  std::fprintf(stderr, "[skipped] %zu test case(s) did not run here (exit 77: ctest shows the suite as skipped):\n",
               skipped.size());
  for (const auto& why : skipped) std::fprintf(stderr, "[skipped]   %s\n", why.c_str());
  return 77;
}
