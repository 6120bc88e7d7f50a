// The router kernels of kernels/cpu/router_kernels.h, each against a naive loop written here:
// top-p counts, EMoE pool sampling, expert counts, the load-balance / z / KL losses and their
// gradients, the aux combination and the dtype conversion. Backward kernels must add.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <vector>

#include "kernels/counter_rng.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/router_kernels.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

// Softmax rows of random logits: a valid (N,E) probability table.
template <class T> std::vector<T> softmax_rows(int N, int E, uint64_t seed) {
  auto z = randn(size_t(N) * E, seed, 1.5);
  std::vector<T> p(z.size());
  for (int n = 0; n < N; ++n) {
    double s = 0;
    for (int e = 0; e < E; ++e) s += std::exp(z[n * E + e]);
    for (int e = 0; e < E; ++e) p[n * E + e] = T(std::exp(z[n * E + e]) / s);
  }
  return p;
}

int naive_top_p(std::vector<double> row, double p, int k_min, int k_max) {
  for (double& x : row) x = std::isnan(x) ? 0.0 : x;
  std::sort(row.begin(), row.end(), [](double a, double b) { return a > b; });
  double acc = 0;
  for (int k = 1; k <= k_max; ++k) {
    acc += row[k - 1];
    if (acc >= p) return std::max(k, k_min);
  }
  return k_max;
}

template <class T> void check_top_p() {
  const int N = 50, E = 7;
  auto p = softmax_rows<T>(N, E, 3);
  p[5 * E + 2] = std::numeric_limits<T>::quiet_NaN();
  std::vector<int> kc(N);
  std::vector<double> scratch(E);
  for (double pp : {0.3, 0.6, 0.9, 1.0})
    for (int k_min : {1, 2}) {
      cpu::top_p_count_forward<T>(kc.data(), scratch.data(), p.data(), N, E, pp, k_min, 5);
      for (int n = 0; n < N; ++n) {
        std::vector<double> row(p.begin() + n * E, p.begin() + (n + 1) * E);
        CHECK(kc[n] == naive_top_p(row, pp, k_min, 5));
      }
    }
}

}  // namespace

TEST_CASE("router kernels: top_p_count_forward matches a naive sort-and-accumulate per row") {
  check_top_p<float>();
  check_top_p<double>();
}

TEST_CASE("router kernels: emoe_sample_forward matches a naive draw without replacement") {
  const int N = 40, E = 9, K = 3, P = 6;
  const uint64_t key = 1234;
  auto p = softmax_rows<double>(N, E, 5);
  // Each token's pool: its top-P experts, best first (ties to the lower id).
  std::vector<int> pool(size_t(N) * P);
  for (int n = 0; n < N; ++n) {
    std::vector<int> order(E);
    for (int e = 0; e < E; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[n * E + a] > p[n * E + b]; });
    std::copy(order.begin(), order.begin() + P, pool.begin() + n * P);
  }
  for (bool renorm : {true, false}) {
    std::vector<int> ids(size_t(N) * K);
    std::vector<double> w(size_t(N) * K);
    cpu::emoe_sample_forward<double>(ids.data(), w.data(), p.data(), pool.data(), N, E, K, P, key, renorm);
    for (int n = 0; n < N; ++n) {
      // Reference: K draws, draw j picks uniformly among the P - j slots not yet taken.
      std::vector<int> slots(P);
      for (int j = 0; j < P; ++j) slots[j] = j;
      std::vector<int> chosen;
      for (int j = 0; j < K; ++j) {
        size_t u = size_t(uniform_int(hash_key(key, uint64_t(n), uint64_t(j)), uint64_t(P - j)));
        std::swap(slots[j], slots[j + u]);
        chosen.push_back(slots[j]);
      }
      std::sort(chosen.begin(), chosen.end());
      double S = 0;
      for (int s : chosen) S += p[n * E + pool[n * P + s]];
      std::set<int> distinct;
      for (int j = 0; j < K; ++j) {
        int e = pool[n * P + chosen[j]];
        CHECK(ids[n * K + j] == e);
        distinct.insert(ids[n * K + j]);
        double want = renorm ? p[n * E + e] / S : p[n * E + e];
        CHECK(w[n * K + j] == doctest::Approx(want).epsilon(1e-14));
      }
      CHECK(distinct.size() == size_t(K));
    }
  }
}

TEST_CASE("router kernels: expert_counts counts ids and skips unused slots") {
  const int E = 5;
  std::vector<int> ids = {0, 3, -1, 3, 4, -1, 0, 0, 2};
  std::vector<int> counts(E, 99);
  cpu::expert_counts(counts.data(), ids.data(), int64_t(ids.size()), E);
  for (int e = 0; e < E; ++e) CHECK(counts[e] == int(std::count(ids.begin(), ids.end(), e)));
}

TEST_CASE("router kernels: load-balance, z and KL losses and their gradients against formulas") {
  const int N = 11, E = 6;
  auto p = softmax_rows<double>(N, E, 7);
  p[3] = 0.0;  // a zero probability: KL skips it
  std::vector<int> counts = {4, 0, 7, 2, 5, 4};
  double total = 22;
  auto lse = randn(N, 9, 2.0);
  // Naive values.
  double lb = 0, z = 0, kl = 0;
  for (int e = 0; e < E; ++e) {
    double P = 0;
    for (int n = 0; n < N; ++n) P += p[n * E + e] / N;
    lb += E * (counts[e] / total) * P;
  }
  for (int n = 0; n < N; ++n) z += lse[n] * lse[n] / N;
  for (double q : p)
    if (q > 0) kl += q * std::log(q * E) / N;
  double got = 0;
  cpu::lb_loss_forward<double>(&got, p.data(), counts.data(), N, E);
  CHECK(got == doctest::Approx(lb).epsilon(1e-13));
  cpu::z_loss_forward<double>(&got, lse.data(), N);
  CHECK(got == doctest::Approx(z).epsilon(1e-13));
  cpu::kl_loss_forward<double>(&got, p.data(), N, E);
  CHECK(got == doctest::Approx(kl).epsilon(1e-13));
  // Gradients add into pre-filled buffers.
  const double dout = -0.7;
  std::vector<double> dp(size_t(N) * E, 0.5), dl(N, 0.25);
  cpu::lb_loss_backward<double>(dp.data(), &dout, counts.data(), N, E);
  cpu::kl_loss_backward<double, double>(dp.data(), &dout, p.data(), N, E);
  cpu::z_loss_backward<double>(dl.data(), &dout, lse.data(), N);
  for (int n = 0; n < N; ++n) {
    for (int e = 0; e < E; ++e) {
      double q = p[n * E + e];
      double want = 0.5 + dout * E * (counts[e] / total) / N + (q > 0 ? dout * (std::log(q * E) + 1) / N : 0.0);
      CHECK(dp[n * E + e] == doctest::Approx(want).epsilon(1e-13));
    }
    CHECK(dl[n] == doctest::Approx(0.25 + dout * 2 * lse[n] / N).epsilon(1e-13));
  }
  // No assignments at all: f_e = 0, the loss and its gradient vanish.
  std::vector<int> none(E, 0);
  cpu::lb_loss_forward<double>(&got, p.data(), none.data(), N, E);
  CHECK(got == 0.0);
}

TEST_CASE("router kernels: router_aux combines lb + z - kl and its backward scales by the coefficients") {
  const double lb = 1.3, z = 4.5, kl = 0.2, cl = 0.01, cz = 0.001, ck = 0.5;
  float out = 0;
  cpu::router_aux_forward<float, double>(&out, &lb, &z, &kl, cl, cz, ck);
  CHECK(out == float(cl * lb + cz * z - ck * kl));
  double dlb = 1, dz = 2, dkl = 3;
  const float g = 0.25f;
  cpu::router_aux_backward<float, double>(&dlb, &dz, &dkl, &g, cl, cz, ck);
  CHECK(dlb == doctest::Approx(1 + 0.25 * cl));
  CHECK(dz == doctest::Approx(2 + 0.25 * cz));
  CHECK(dkl == doctest::Approx(3 - 0.25 * ck));
  cpu::router_aux_backward<float, double>(nullptr, nullptr, nullptr, &g, cl, cz, ck);  // none needed
}

TEST_CASE("router kernels: convert rounds each element to the target type") {
  auto v = randn(33, 11);
  std::vector<float> f(v.size());
  cpu::convert<float, double>(f.data(), v.data(), int64_t(v.size()));
  for (size_t i = 0; i < v.size(); ++i) CHECK(f[i] == static_cast<float>(v[i]));
}
