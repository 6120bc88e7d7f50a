// The router against a naive loop written here: chosen ids (best first, ties to the lower id),
// renormalised and raw weights, load-balance and z-loss values, for K = 1, 2 and E; and the
// gradient of the composed router (gating + loss ops) against finite differences.
#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>

#include "model/moe.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

struct Naive {
  std::vector<int> ids;
  std::vector<double> w;
  double lb = 0, z = 0;
};

Naive naive_router(const std::vector<double>& logits, int N, int E, int K, bool renorm) {
  Naive r;
  std::vector<double> Pmean(E, 0.0), f(E, 0.0);
  for (int n = 0; n < N; ++n) {
    std::vector<double> p(E);
    double mx = *std::max_element(logits.begin() + n * E, logits.begin() + (n + 1) * E);
    double s = 0;
    for (int e = 0; e < E; ++e) s += p[e] = std::exp(logits[n * E + e] - mx);
    for (int e = 0; e < E; ++e) p[e] /= s;
    double lse = mx + std::log(s);
    r.z += lse * lse / N;
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    double chosen = 0;
    for (int k = 0; k < K; ++k) chosen += p[order[k]];
    for (int k = 0; k < K; ++k) {
      r.ids.push_back(order[k]);
      r.w.push_back(renorm ? p[order[k]] / chosen : p[order[k]]);
      f[order[k]] += 1.0 / (double(N) * K);
    }
    for (int e = 0; e < E; ++e) Pmean[e] += p[e] / N;
  }
  for (int e = 0; e < E; ++e) r.lb += E * f[e] * Pmean[e];
  return r;
}

}  // namespace

TEST_CASE("router matches a naive loop for K = 1, 2, E (f32 and f64, renormalised and raw)") {
  const int N = 7, E = 5;
  auto logits = randn(N * E, 3, 1.5);
  // Ties: token 2 has three equal top logits, token 4 is all equal.
  for (int e = 0; e < 3; ++e) logits[2 * E + e] = 0.75;
  for (int e = 0; e < E; ++e) logits[4 * E + e] = -0.25;
  for (DType dt : {DType::F64, DType::F32}) {
    for (bool renorm : {true, false}) {
      for (int K : {1, 2, E}) {
        CAPTURE(K);
        CAPTURE(renorm);
        Arena arena(1 << 16);
        Tape tape(arena);
        RouterOptions o;
        o.renormalize = renorm;
        o.lb_coef = 0.01;
        o.z_coef = 0.001;
        Var x = leaf(tape, {N, E}, dt, logits);
        RouterOut r = router(tape, x, K, o);
        Naive ref = naive_router(logits, N, E, K, renorm);
        double tol = dt == DType::F64 ? 1e-12 : 1e-6;
        for (int i = 0; i < N * K; ++i) CHECK(r.ids.ptr<int>()[i] == ref.ids[i]);
        CHECK(rel_err(read(r.weights.val), ref.w) < tol);
        CHECK(read(r.lb)[0] == doctest::Approx(ref.lb).epsilon(tol));
        CHECK(read(r.z)[0] == doctest::Approx(ref.z).epsilon(tol));
        CHECK(read(r.aux.val)[0] == doctest::Approx(0.01 * ref.lb + 0.001 * ref.z).epsilon(tol * 10));
        int total = 0;
        for (int e = 0; e < E; ++e) total += r.counts.ptr<int>()[e];
        CHECK(total == N * K);
        if (K == E) CHECK(read(r.lb)[0] == doctest::Approx(1.0).epsilon(tol));  // f_e = 1/E for all e
      }
    }
  }
}

TEST_CASE("router: ties go to the lower expert id") {
  Arena arena(1 << 16);
  Tape tape(arena);
  Var x = leaf(tape, {1, 4}, DType::F64, {0.5, 2.0, 2.0, 2.0});
  RouterOut r = router(tape, x, 2, RouterOptions{});
  CHECK(r.ids.ptr<int>()[0] == 1);
  CHECK(r.ids.ptr<int>()[1] == 2);
  auto w = read(r.weights.val);
  CHECK(w[0] == doctest::Approx(0.5));
  CHECK(w[1] == doctest::Approx(0.5));
}

TEST_CASE("router: top_p picks the smallest k whose sorted probabilities reach p") {
  const int N = 40, E = 6, K = 4;
  auto logits = randn(N * E, 11, 2.0);
  Arena arena(1 << 18);
  Tape tape(arena);
  RouterOptions o;
  o.top_p = 0.5;
  Var x = leaf(tape, {N, E}, DType::F64, logits);
  RouterOut r = router(tape, x, K, o);
  auto p = read(r.probs);
  for (int n = 0; n < N; ++n) {
    std::vector<double> s(p.begin() + n * E, p.begin() + (n + 1) * E);
    std::sort(s.rbegin(), s.rend());
    int want = 0;
    double acc = 0;
    while (acc < 0.5) acc += s[want++];
    want = std::min(want, K);
    int got = 0;
    for (int k = 0; k < K; ++k) got += r.ids.ptr<int>()[n * K + k] >= 0;
    CHECK(got == want);
  }
}

TEST_CASE("router(): gating and the three loss ops composed, gradient against finite differences") {
  // The composition model/moe.cpp runs (probabilities' gradient in f64 shared by the LB and KL
  // losses): d(<R, weights> + 0.9 aux) / d logits, analytic vs central differences in double.
  const int N = 6, E = 5;
  auto logits = randn(N * E, 21, 2.0);
  auto R = randn(size_t(N) * 3, 22);
  for (int pool : {0, 4}) {
    CAPTURE(pool);
    RouterOptions o;
    o.lb_coef = 0.3;
    o.z_coef = 0.2;
    o.kl_coef = 0.1;
    o.pool = pool;
    o.sample_key = 5;
    const int K = pool ? 2 : 3;
    auto loss = [&](const std::vector<double>& v, std::vector<double>* grad) {
      Arena arena(1 << 18);
      Tape tape(arena);
      Var x = leaf(tape, {N, E}, DType::F64, v, grad != nullptr);
      RouterOut r = router(tape, x, K, o);
      auto w = read(r.weights.val);
      double L = 0.9 * read(r.aux.val)[0];
      for (int i = 0; i < N * K; ++i) L += R[i] * w[i];
      if (grad) {
        fill(r.weights.grad, std::vector<double>(R.begin(), R.begin() + N * K));
        fill(r.aux.grad, {0.9});
        tape.backward_seeded();
        *grad = read(x.grad);
      }
      return L;
    };
    std::vector<double> g, fd(logits.size());
    loss(logits, &g);
    for (size_t j = 0; j < logits.size(); ++j) {
      auto p = logits, m = logits;
      p[j] += 1e-6;
      m[j] -= 1e-6;
      fd[j] = (loss(p, nullptr) - loss(m, nullptr)) / 2e-6;
    }
    CHECK(rel_err(g, fd) < 1e-6);
  }
}
