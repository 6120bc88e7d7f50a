// A test case that cannot run here (no root for a tmpfs, ...) is reported as skipped, never as a
// pass: it calls skip_case(why) and returns. The shared doctest main (doctest_main.cpp) then
// prints every reason and exits 77 when nothing failed, which ctest shows as "Skipped" for suites
// registered with SKIP_RETURN_CODE 77 (tests/CMakeLists.txt). Inline, so that one list is shared
// by every translation unit of a suite without a link dependency.
#pragma once
#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace anyk::test {

inline std::vector<std::string>& skipped_cases() {
  static std::vector<std::string> reasons;
  return reasons;
}

// Records the current case as skipped, with why (shown by the case and by the main's summary).
inline void skip_case(const std::string& why) {
  const doctest::ContextOptions* o = doctest::getContextOptions();
  const doctest::TestCaseData* tc = o ? o->currentTest : nullptr;
  skipped_cases().push_back(std::string(tc ? tc->m_name : "?") + ": " + why);
  MESSAGE("SKIPPED: " << why);
}

}  // namespace anyk::test
