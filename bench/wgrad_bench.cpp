// The weight-gradient product dW += dYᵀ·X (kernels/cpu/gemm.h, gemm_dytx_acc) with X packed once
// for all chunks of dW's rows (kernels/cpu/gemm_shared_pack.h), against the per-chunk Eigen
// products it replaced (X packed again for every chunk), on the training models' shapes. Both
// give the same bits (tests/test_gemm_shared_pack.cpp); this prints their CPU time (process CPU
// time, so that it means something on a loaded machine), old and new alternated in every round,
// medians over rounds, and new/old.
//
//   build/wgrad_bench [--threads 1] [--rounds 7] [--reps 5]
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/cpu/gemm.h"

using namespace anyk::cpu;
using bench::cpu_now;
using bench::median;

namespace {

// The former gemm_dytx_acc: one Eigen product per chunk of dW's rows.
void old_dytx(float* dw, const float* dy, const float* x, int N, int I, int O) {
  eigen_serial();
  CMatMap<float> X(x, N, I);
  for_row_chunks(O, int64_t(N) * I, kGemmGrainFlops, [&](int o0, int o1) {
    CSMatMap<float> dY(dy + o0, N, o1 - o0, Eigen::OuterStride<>(O));
    MatMap<float>(dw + int64_t(o0) * I, o1 - o0, I).noalias() += dY.transpose() * X;
  });
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, rounds = 7, reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string o = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (v < 1) {
      std::fprintf(stderr, "anyk: error: %s %s must be a positive integer\n", argv[i], argv[i + 1]);
      return 2;
    }
    if (o == "--threads") threads = v;
    else if (o == "--rounds") rounds = v;
    else if (o == "--reps") reps = v;
    else {
      std::fprintf(stderr, "anyk: error: unknown option %s (use --threads, --rounds, --reps)\n", o.c_str());
      return 2;
    }
  }
  omp_set_num_threads(threads);
  std::printf("wgrad_bench: %d thread(s), %d rounds x %d reps, CPU ms per product (medians)\n", threads, rounds,
              reps);
  std::printf("%-48s %10s %10s %8s %6s\n", "shape", "per-chunk", "shared", "new/old", "bits");
  for (const bench::ProductShape& s : bench::kTrainingProducts) {
    std::vector<float> x(size_t(s.N) * s.I), dy(size_t(s.N) * s.O), a(size_t(s.O) * s.I), b(a.size());
    uint32_t r = 12345;
    auto next = [&] { return float(int32_t(r = r * 1664525u + 1013904223u) >> 8) * 0x1p-23f; };
    for (auto& v : x) v = next();
    for (auto& v : dy) v = next();
    std::vector<double> to, tn;
    for (int k = 0; k < rounds; ++k) {
      std::fill(a.begin(), a.end(), 0.f);
      std::fill(b.begin(), b.end(), 0.f);
      double t0 = cpu_now();
      for (int q = 0; q < reps; ++q) old_dytx(a.data(), dy.data(), x.data(), s.N, s.I, s.O);
      double t1 = cpu_now();
      for (int q = 0; q < reps; ++q) gemm_dytx_acc(b.data(), dy.data(), x.data(), s.N, s.I, s.O);
      double t2 = cpu_now();
      to.push_back((t1 - t0) * 1e3 / reps);
      tn.push_back((t2 - t1) * 1e3 / reps);
    }
    const bool same = std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    const double mo = median(to), mn = median(tn);
    std::printf("%-48s %10.3f %10.3f %8.3f %6s\n", s.what, mo, mn, mn / mo, same ? "same" : "DIFF");
  }
  return 0;
}
