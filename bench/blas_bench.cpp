// anyk's three training products (kernels/cpu/gemm.h: y = x·Wᵀ, dx += dy·W, dW += dyᵀ·x, Eigen's
// kernel under anyk's row chunks and shared packing) against the same products in OpenBLAS's
// cblas_sgemm, the BLAS that the PyTorch peer of bench/compare.py runs on. It answers one question:
// are anyk's products slower than the peer's? Both run on one thread; the process CPU time of each
// is taken in turn in every round (so a loaded machine slows both alike), medians over rounds,
// printed as GFLOP/s and anyk/BLAS. The results are compared too (max |difference| / max |value|):
// the two sum in other orders, so they agree to rounding, not bit for bit.
//
// OpenBLAS is loaded at run time (dlopen), so anyk does not link it: the first of --blas PATH,
// then libopenblas.so.0 in Debian's openblas-openmp and openblas-pthread directories, then the
// loader's search path. Without one it says so and exits 2 (fix: apt-get install
// libopenblas0-openmp, or pass --blas).
//
//   build/blas_bench [--rounds 7] [--reps 5] [--blas /path/to/libopenblas.so.0]
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/cpu/gemm.h"

using namespace anyk::cpu;
using bench::cpu_now;
using bench::median;

namespace {

// CBLAS's enum values (the C interface fixes them: row-major 101, no transpose 111, transpose 112).
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
typedef void (*SgemmFn)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                        int);
typedef void (*SetThreadsFn)(int);

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, double(std::fabs(a[i] - b[i])));
    m = std::max(m, double(std::fabs(a[i])));
  }
  return m > 0 ? d / m : d;
}

// The library and its sgemm, or nullptr with the paths tried in `tried`.
SgemmFn load_blas(const std::string& given, std::string& tried, std::string& path) {
  std::vector<std::string> cands;
  if (!given.empty()) cands.push_back(given);
  else
    cands = {"/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
             "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
             "/usr/lib/aarch64-linux-gnu/openblas-openmp/libopenblas.so.0",
             "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0", "libopenblas.so.0"};
  for (const std::string& c : cands) {
    tried += (tried.empty() ? "" : ", ") + c;
    void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) continue;
    auto f = reinterpret_cast<SgemmFn>(dlsym(h, "cblas_sgemm"));
    if (!f) continue;
    if (auto st = reinterpret_cast<SetThreadsFn>(dlsym(h, "openblas_set_num_threads"))) st(1);
    path = c;
    return f;
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 7, reps = 5;
  std::string blas;
  for (int i = 1; i < argc; i += 2) {
    const std::string o = argv[i];
    if (o == "--help" || o == "-h") {
      std::printf("usage: blas_bench [--rounds 7] [--reps 5] [--blas /path/to/libopenblas.so.0]\n"
                  "(see the comment at the top of bench/blas_bench.cpp)\n");
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "anyk: error: %s needs a value (see blas_bench --help)\n", o.c_str());
      return 2;
    }
    if (o == "--blas") {
      blas = argv[i + 1];
      continue;
    }
    const int v = std::atoi(argv[i + 1]);
    if (v < 1) {
      std::fprintf(stderr, "anyk: error: %s %s must be a positive integer\n", o.c_str(), argv[i + 1]);
      return 2;
    }
    if (o == "--rounds") rounds = v;
    else if (o == "--reps") reps = v;
    else {
      std::fprintf(stderr, "anyk: error: unknown option %s (use --rounds, --reps, --blas)\n", o.c_str());
      return 2;
    }
  }
  std::string tried, path;
  const SgemmFn sgemm = load_blas(blas, tried, path);
  if (!sgemm) {
    std::fprintf(stderr,
                 "anyk: error: no OpenBLAS with cblas_sgemm found (tried %s); apt-get install "
                 "libopenblas0-openmp, or pass --blas PATH\n",
                 tried.c_str());
    return 2;
  }
  omp_set_num_threads(1);
  std::printf("blas_bench: 1 thread, %d rounds x %d reps, GFLOP/s of CPU time (medians); BLAS %s\n", rounds,
              reps, path.c_str());
  std::printf("%-46s %-8s %8s %8s %9s %9s\n", "shape", "product", "anyk", "BLAS", "anyk/BLAS", "rel.diff");
  std::vector<double> all;
  for (const bench::ProductShape& s : bench::kTrainingProducts) {  // wgrad_bench's
    const int N = s.N, I = s.I, O = s.O;
    std::vector<float> x(size_t(N) * I), w(size_t(O) * I), dy(size_t(N) * O);
    uint32_t r = 12345;
    auto next = [&] { return float(int32_t(r = r * 1664525u + 1013904223u) >> 8) * 0x1p-23f; };
    for (auto& v : x) v = next();
    for (auto& v : w) v = next();
    for (auto& v : dy) v = next();
    for (int p = 0; p < 3; ++p) {
      // p = 0: y (N,O) = x·Wᵀ; 1: dx (N,I) += dy·W; 2: dW (O,I) += dyᵀ·x.
      const size_t out_n = p == 0 ? size_t(N) * O : p == 1 ? size_t(N) * I : size_t(O) * I;
      std::vector<float> a(out_n, 0.f), b(out_n, 0.f);
      auto run_anyk = [&] {
        if (p == 0) gemm_xwt(a.data(), x.data(), w.data(), N, I, O, false);
        else if (p == 1) gemm_dyw_acc(a.data(), dy.data(), w.data(), N, I, O);
        else gemm_dytx_acc(a.data(), dy.data(), x.data(), N, I, O);
      };
      auto run_blas = [&] {
        if (p == 0) sgemm(kRowMajor, kNoTrans, kTrans, N, O, I, 1.f, x.data(), I, w.data(), I, 0.f, b.data(), O);
        else if (p == 1)
          sgemm(kRowMajor, kNoTrans, kNoTrans, N, I, O, 1.f, dy.data(), O, w.data(), I, 1.f, b.data(), I);
        else sgemm(kRowMajor, kTrans, kNoTrans, O, I, N, 1.f, dy.data(), O, x.data(), I, 1.f, b.data(), I);
      };
      run_anyk();  // warm-up; also the one result compared (the accumulating ones from 0)
      run_blas();
      const double diff = rel_diff(a, b);
      std::vector<double> ta, tb;
      for (int k = 0; k < rounds; ++k) {
        double t0 = cpu_now();
        for (int q = 0; q < reps; ++q) run_anyk();
        double t1 = cpu_now();
        for (int q = 0; q < reps; ++q) run_blas();
        double t2 = cpu_now();
        ta.push_back((t1 - t0) / reps);
        tb.push_back((t2 - t1) / reps);
      }
      const double flop = 2.0 * N * I * O, ga = flop / median(ta) / 1e9, gb = flop / median(tb) / 1e9;
      all.push_back(ga / gb);
      static const char* names[] = {"x.Wt", "dy.W", "dyt.x"};
      std::printf("%-46s %-8s %8.1f %8.1f %9.2f %9.1e\n", p == 0 ? s.what : "", names[p], ga, gb, ga / gb, diff);
    }
  }
  std::printf("anyk/BLAS over the %zu products: median %.2f, range %.2f-%.2f\n", all.size(), median(all),
              *std::min_element(all.begin(), all.end()), *std::max_element(all.begin(), all.end()));
  return 0;
}
