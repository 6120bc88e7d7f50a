// The `anyk` executable: hands argv to the command dispatcher in launch/cli.cpp.
#include <cstdlib>
#include <cstring>

#include <unistd.h>

#include "launch/cli.h"

int main(int argc, char** argv) {
  // OpenMP threads spin briefly between parallel regions (GOMP_SPINCOUNT=100000, a few ms at
  // most) unless the user chose a policy: on an idle machine that trains about 1.5x faster than
  // sleeping at once. Beside another busy process spinning would halve the speed of 2 threads,
  // so the thread governor (kernels/cpu/thread_governor.h) gives threads back while other
  // processes hold the cores. Without the governor (ANYK_ADAPTIVE_THREADS=0, or no
  // /proc/self/schedstat to read) threads sleep at once (OMP_WAIT_POLICY=passive), the safe
  // choice on a shared machine; `anyk serve` sleeps too (its thread count stays fixed, as its
  // --target-ms-per-token calibration assumes). docs/threads.md has the measurements. libgomp reads these
  // variables when it loads, before main, so the process re-executes itself once with one set.
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
    const char* adapt = std::getenv("ANYK_ADAPTIVE_THREADS");
    const bool serve = argc > 1 && std::strcmp(argv[1], "serve") == 0;
    const bool governed =
        !serve && !(adapt && std::strcmp(adapt, "0") == 0) && ::access("/proc/self/schedstat", R_OK) == 0;
    if (governed)
      ::setenv("GOMP_SPINCOUNT", "100000", 1);
    else
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
