// `anyk --version` (launch/version.h).
#include "launch/version.h"

#include "kernels/cpu_features.h"

namespace anyk::launch {

std::string version_text() {
  const BuildInfo& b = build_info();
  std::string isa = kernels::compiled_isa();
  std::string features;
  for (const char* const* f = kernels::compiled_cpu_features(); *f; ++f) features += std::string(" ") + *f;
  if (!features.empty()) isa += " (checked at start:" + features + ")";
  std::string t = std::string("anyk ") + b.version + "\n";
  t += std::string("commit:   ") + b.commit + "\n";
  t += std::string("compiler: ") + b.compiler + " (" + b.build_type + ")\n";
  t += "isa:      " + isa + "\n";
  t += std::string("cuda:     ") + b.cuda + "\n";
  return t;
}

}  // namespace anyk::launch
