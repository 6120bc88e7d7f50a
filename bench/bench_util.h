// Small pieces the benchmarks share: process CPU time, the median of a sample, and the shapes of
// the training models' linear products (wgrad_bench and blas_bench time the same ones).
#pragma once
#include <time.h>

#include <algorithm>
#include <vector>

namespace bench {

// Seconds of CPU time used by the whole process (every thread): a figure that still means
// something on a machine shared with other jobs.
inline double cpu_now() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

// The median (the mean of the middle two for an even count).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// A linear layer's product: N rows of I inputs to O outputs.
struct ProductShape {
  const char* what;
  int N, I, O;
};

// Tokens N = batch x seq; an expert's rows about N x mean K / E (K in [1,4], E = 8).
inline constexpr ProductShape kTrainingProducts[] = {
    {"quickstart qkv (N2048 C128 -> 384)", 2048, 128, 384},
    {"quickstart out (C128 -> 128)", 2048, 128, 128},
    {"quickstart expert up (640 rows, 128 -> 256)", 640, 128, 256},
    {"quickstart expert down (640 rows, 128 -> 128)", 640, 128, 128},
    {"C256 qkv (N4096 C256 -> 768)", 4096, 256, 768},
    {"C256 out (C256 -> 256)", 4096, 256, 256},
    {"C256 expert up (1280 rows, 256 -> 512)", 1280, 256, 512},
    {"C256 expert down (1280 rows, 256 -> 256)", 1280, 256, 256}};

}  // namespace bench
