// Placeholder dispatcher; replaced by the full CLI.
#include "launch/cli.h"

#include <cstdio>

namespace anyk {
int run_cli(int argc, char** argv) {
  std::puts("anyk: train once, serve any K");
  return 0;
}
}  // namespace anyk
