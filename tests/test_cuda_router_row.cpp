// The per-row router functions the CUDA kernels run (kernels/cuda/router_row.cuh, one thread per
// token row) executed here on the host against the CPU kernels: gating, its backward, the top-p
// count (without the CPU's sort scratch) and the EMoE draws must give identical ids, counts and
// draws, and values equal up to FMA contraction. No GPU is involved: this checks the logic the device code shares, not the device.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "kernels/cpu/router_kernels.h"
#include "kernels/cuda/router_row.cuh"

using namespace anyk;

namespace {

// Random values with deliberate ties: every third entry repeats its predecessor.
template <class T> std::vector<T> random_with_ties(std::mt19937& g, size_t n, double lo, double hi) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = (i % 3 == 2) ? v[i - 1] : T(u(g));
  return v;
}

// Values: the same operations in the same order, but the compiler may contract a*b+c into an FMA
// differently in the two places (GCC with -march=native; nvcc on the device), so a few ulps are
// allowed: |a - b| <= tol * max(1, |a|). Ids, counts and draws are compared exactly.
template <class T> bool close(const std::vector<T>& a, const std::vector<T>& b) {
  const double tol = sizeof(T) == 4 ? 1e-5 : 1e-12;
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = double(a[i]), y = double(b[i]);
    if (!(std::abs(x - y) <= tol * std::max(1.0, std::abs(x)))) return false;
  }
  return true;
}

template <class T> void check_gating(int N, int E, int K, bool renorm, bool use_kcount, unsigned seed) {
  std::mt19937 g(seed);
  auto logits = random_with_ties<T>(g, size_t(N) * E, -3, 3);
  std::vector<int32_t> kc(N);
  for (int n = 0; n < N; ++n) kc[n] = 1 + int(g() % unsigned(K));
  const int32_t* kcount = use_kcount ? kc.data() : nullptr;
  std::vector<T> p0(size_t(N) * E), l0(N), w0(size_t(N) * K), p1 = p0, l1 = l0, w1 = w0;
  std::vector<int32_t> i0(size_t(N) * K), i1 = i0;
  cpu::router_forward(p0.data(), l0.data(), i0.data(), w0.data(), logits.data(), kcount, N, E, K, renorm);
  for (int n = 0; n < N; ++n)
    cuda::row::router_forward_row(p1.data() + size_t(n) * E, l1.data() + n, i1.data() + size_t(n) * K,
                                  w1.data() + size_t(n) * K, logits.data() + size_t(n) * E,
                                  kcount ? kcount[n] : K, E, K, renorm);
  CHECK(i0 == i1);
  CHECK(close(p0, p1));
  CHECK(close(l0, l1));
  CHECK(close(w0, w1));
  // Backward with and without dprobs / dlse.
  auto dw = random_with_ties<T>(g, size_t(N) * K, -1, 1);
  auto dp = random_with_ties<T>(g, size_t(N) * E, -1, 1);
  auto dl = random_with_ties<T>(g, size_t(N), -1, 1);
  for (int variant = 0; variant < 2; ++variant) {
    const T* dpp = variant ? dp.data() : nullptr;
    const T* dlp = variant ? dl.data() : nullptr;
    auto z0 = random_with_ties<T>(g, size_t(N) * E, -1, 1), z1 = z0;
    cpu::router_backward(z0.data(), dw.data(), dpp, dlp, p0.data(), i0.data(), N, E, K, renorm);
    for (int n = 0; n < N; ++n)
      cuda::row::router_backward_row(z1.data() + size_t(n) * E, dw.data() + size_t(n) * K,
                                     dpp ? dpp + size_t(n) * E : nullptr, dlp ? dlp[n] : T(0),
                                     p0.data() + size_t(n) * E, i0.data() + size_t(n) * K, E, K, renorm);
    CHECK(close(z0, z1));
  }
}

template <class T> void check_top_p(int N, int E, unsigned seed) {
  std::mt19937 g(seed);
  auto q = random_with_ties<T>(g, size_t(N) * E, 0, 1);
  for (size_t i = 7; i < q.size(); i += 11) q[i] = std::numeric_limits<T>::quiet_NaN();
  for (size_t i = 5; i < q.size(); i += 13) q[i] = T(0);
  std::vector<double> scratch(E);
  for (double p : {0.05, 0.3, 0.5, 0.9, 1.0})
    for (int k_max : {1, E > 1 ? 2 : 1, E / 2 > 0 ? E / 2 : 1, E})  // k_max <= E, as the router requires
      for (int k_min : {1, k_max}) {
        std::vector<int32_t> k0(N);
        cpu::top_p_count_forward(k0.data(), scratch.data(), q.data(), N, E, p, k_min, k_max);
        for (int n = 0; n < N; ++n)
          CHECK(cuda::row::top_p_count_row(q.data() + size_t(n) * E, E, p, k_min, k_max) == k0[n]);
      }
}

template <class T> void check_emoe(int N, int E, int K, int P, bool renorm, uint64_t key) {
  std::mt19937 g{static_cast<unsigned>(key)};
  auto q = random_with_ties<T>(g, size_t(N) * E, 0, 1);
  std::vector<int32_t> pool(size_t(N) * P);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < P; ++j) pool[size_t(n) * P + j] = int32_t((j * 7 + n) % E);  // distinct: P <= E, 7 odd
  std::vector<int32_t> i0(size_t(N) * K), i1 = i0;
  std::vector<T> w0(size_t(N) * K), w1 = w0;
  cpu::emoe_sample_forward(i0.data(), w0.data(), q.data(), pool.data(), N, E, K, P, key, renorm);
  for (int n = 0; n < N; ++n)
    cuda::row::emoe_sample_row(i1.data() + size_t(n) * K, w1.data() + size_t(n) * K, q.data() + size_t(n) * E,
                               pool.data() + size_t(n) * P, n, K, P, key, renorm);
  CHECK(i0 == i1);
  CHECK(close(w0, w1));
}

}  // namespace

TEST_CASE("CUDA router rows: gating forward and backward equal the CPU kernels") {
  for (bool renorm : {false, true})
    for (bool kc : {false, true}) {
      check_gating<float>(37, 8, 2, renorm, kc, 1);
      check_gating<double>(37, 8, 2, renorm, kc, 2);
      check_gating<float>(9, 300, 4, renorm, kc, 3);
      check_gating<double>(5, 3, 3, renorm, kc, 4);  // K = E
      check_gating<float>(6, 1, 1, renorm, kc, 5);   // E = 1
    }
}

TEST_CASE("CUDA router rows: top-p count without scratch equals the CPU's partial sort") {
  check_top_p<float>(40, 8, 11);
  check_top_p<double>(40, 8, 12);
  check_top_p<float>(6, 257, 13);
  check_top_p<double>(3, 1, 14);
  // Exact tie sums: 4 * 0.125 = 0.5 stops at 4 in both.
  std::vector<double> u(8, 0.125), scratch(8);
  int32_t k0 = 0;
  cpu::top_p_count_forward(&k0, scratch.data(), u.data(), 1, 8, 0.5, 1, 8);
  CHECK(k0 == 4);
  CHECK(cuda::row::top_p_count_row(u.data(), 8, 0.5, 1, 8) == 4);
}

TEST_CASE("CUDA router rows: EMoE draws and weights equal the CPU kernel's") {
  for (bool renorm : {false, true}) {
    check_emoe<float>(50, 8, 2, 4, renorm, 0x1234);
    check_emoe<double>(50, 8, 1, 8, renorm, 99);
    check_emoe<float>(20, 64, 5, 64, renorm, 7);   // the largest pool
    check_emoe<double>(20, 100, 3, 3, renorm, 8);  // K = P: all drawn
  }
}
