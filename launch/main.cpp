// The `anyk` executable: hands argv to the command dispatcher in launch/cli.cpp.
#include <cstdlib>

#include <unistd.h>

#include "launch/cli.h"

int main(int argc, char** argv) {
  // OpenMP threads wait for work passively (sleep at once) unless the user chose a policy:
  // spinning waiters collapse a run beside another busy process (docs/threads.md measures it:
  // generate at 2 threads went from about 1% of the 1-thread speed to parity). libgomp reads
  // the variable when it loads, before main, so the process re-executes itself once with it set.
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
    ::setenv("OMP_WAIT_POLICY", "passive", 1);
    // The resolved path, not /proc/self/exe itself: exec names the process after the file it
    // runs, and "exe" would hide anyk from ps, pgrep, Slurm's and our own tools (cluster_test.sh
    // finds a host's rank by its name).
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
      self[n] = '\0';
      ::execv(self, argv);  // returns only on failure: then go on with the default policy
    }
  }
  return anyk::run_cli(argc, argv);
}
