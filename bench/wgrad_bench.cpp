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
#include <ctime>
#include <string>
#include <vector>

#include "kernels/cpu/gemm.h"

using namespace anyk::cpu;

namespace {

double cpu_now() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The former gemm_dytx_acc: one Eigen product per chunk of dW's rows.
void old_dytx(float* dw, const float* dy, const float* x, int N, int I, int O) {
  eigen_serial();
  CMatMap<float> X(x, N, I);
  for_row_chunks(O, int64_t(N) * I, kGemmGrainFlops, [&](int o0, int o1) {
    CSMatMap<float> dY(dy + o0, N, o1 - o0, Eigen::OuterStride<>(O));
    MatMap<float>(dw + int64_t(o0) * I, o1 - o0, I).noalias() += dY.transpose() * X;
  });
}

struct Shape {
  const char* what;
  int N, I, O;
};

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
  // Tokens N = batch x seq; an expert's rows about N x mean K / E (K in [1,4], E = 8).
  const Shape shapes[] = {{"quickstart qkv (N2048 C128 -> 384)", 2048, 128, 384},
                          {"quickstart out (C128 -> 128)", 2048, 128, 128},
                          {"quickstart expert up (640 rows, 128 -> 256)", 640, 128, 256},
                          {"quickstart expert down (640 rows, 128 -> 128)", 640, 128, 128},
                          {"C256 qkv (N4096 C256 -> 768)", 4096, 256, 768},
                          {"C256 out (C256 -> 256)", 4096, 256, 256},
                          {"C256 expert up (1280 rows, 256 -> 512)", 1280, 256, 512},
                          {"C256 expert down (1280 rows, 256 -> 256)", 1280, 256, 256}};
  std::printf("wgrad_bench: %d thread(s), %d rounds x %d reps, CPU ms per product (medians)\n", threads, rounds,
              reps);
  std::printf("%-48s %10s %10s %8s %6s\n", "shape", "per-chunk", "shared", "new/old", "bits");
  for (const Shape& s : shapes) {
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
