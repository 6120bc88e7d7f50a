// `anyk --version`: the version, the git commit the build was configured from, the compiler, the
// CPU instruction-set baseline and whether the CUDA kernels are built in.
#pragma once
#include <string>

namespace anyk::launch {

struct BuildInfo {
  const char* version;   // project(anyk VERSION ...) in CMakeLists.txt
  const char* commit;    // git rev-parse at configure time, or "unknown (not a git checkout)"
  const char* compiler;  // C++ compiler id and version
  const char* build_type;
  const char* cuda;      // "off", or "on (nvcc X, architectures Y)"
};

// Filled in at configure time (cmake/build_info.cpp.in).
const BuildInfo& build_info();

// The text `anyk --version` prints: "anyk <version>" then one "key: value" line each.
std::string version_text();

}  // namespace anyk::launch
