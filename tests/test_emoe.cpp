// EMoE: stochastic co-activation sampling in the router (pool = K is plain top-K; chosen experts
// always lie in the top-pool; every pool member is chosen with frequency K/pool), the pool-size
// schedule, and the hierarchical router loss -KL(q || U) against its direct formula.
#include <doctest/doctest.h>

#include <algorithm>
#include <set>

#include "model/k_schedule.h"
#include "model/moe.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

TEST_CASE("emoe: a pool of size K is plain top-K") {
  const int N = 9, E = 6, K = 2;
  auto logits = randn(N * E, 41, 1.5);
  for (DType dt : {DType::F64, DType::F32}) {
    Arena arena(1 << 16);
    Tape tape(arena);
    Var x = leaf(tape, {N, E}, dt, logits);
    RouterOptions plain;
    RouterOut a = router(tape, x, K, plain);
    RouterOptions same = plain;
    same.pool = K;
    same.sample_key = 1234;
    RouterOut b = router(tape, x, K, same);
    for (int i = 0; i < N * K; ++i) CHECK(a.ids.ptr<int>()[i] == b.ids.ptr<int>()[i]);
    CHECK(read(a.weights.val) == read(b.weights.val));
  }
}

TEST_CASE("emoe: chosen experts are distinct, inside the top-pool, and renormalised") {
  const int N = 200, E = 8, K = 2, POOL = 5;
  auto logits = randn(N * E, 42, 1.0);
  Arena arena(1 << 18);
  Tape tape(arena);
  Var x = leaf(tape, {N, E}, DType::F64, logits);
  RouterOptions o;
  o.pool = POOL;
  o.sample_key = 99;
  RouterOut r = router(tape, x, K, o);
  auto p = read(r.probs);
  auto w = read(r.weights.val);
  for (int n = 0; n < N; ++n) {
    std::vector<int> order(E);
    for (int e = 0; e < E; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[n * E + a] > p[n * E + b]; });
    std::set<int> top(order.begin(), order.begin() + POOL);
    std::set<int> chosen;
    double S = 0;
    for (int k = 0; k < K; ++k) {
      int e = r.ids.ptr<int>()[n * K + k];
      CHECK(top.count(e) == 1);
      chosen.insert(e);
      S += p[n * E + e];
    }
    CHECK(chosen.size() == size_t(K));
    for (int k = 0; k < K; ++k) CHECK(w[n * K + k] == doctest::Approx(p[n * E + r.ids.ptr<int>()[n * K + k]] / S));
    // probability order within the chosen
    CHECK(p[n * E + r.ids.ptr<int>()[n * K]] >= p[n * E + r.ids.ptr<int>()[n * K + 1]]);
  }
  // The same key gives the same draw; another key a different one.
  RouterOut again = router(tape, x, K, o);
  RouterOptions o2 = o;
  o2.sample_key = 100;
  RouterOut other = router(tape, x, K, o2);
  int same = 0, diff = 0;
  for (int i = 0; i < N * K; ++i) {
    same += again.ids.ptr<int>()[i] == r.ids.ptr<int>()[i];
    diff += other.ids.ptr<int>()[i] != r.ids.ptr<int>()[i];
  }
  CHECK(same == N * K);
  CHECK(diff > 0);
}

TEST_CASE("emoe: every pool member is chosen with frequency K/pool (chi-square)") {
  const int N = 20000, E = 8, K = 2, POOL = 6;
  // The same logits for every token: the pool is experts 0..5 (descending), 6 and 7 never.
  std::vector<double> row = {3.0, 2.5, 2.0, 1.5, 1.0, 0.5, -4.0, -5.0};
  std::vector<double> logits;
  for (int n = 0; n < N; ++n) logits.insert(logits.end(), row.begin(), row.end());
  Arena arena(size_t(64) << 20);
  Tape tape(arena);
  tape.set_grad_enabled(false);
  Var x = leaf(tape, {N, E}, DType::F32, logits, false);
  RouterOptions o;
  o.pool = POOL;
  o.sample_key = 7;
  RouterOut r = router(tape, x, K, o);
  std::vector<double> count(E, 0);
  for (int i = 0; i < N * K; ++i) count[r.ids.ptr<int>()[i]] += 1;
  CHECK(count[6] == 0);
  CHECK(count[7] == 0);
  const double expect = double(N) * K / POOL;
  double chi2 = 0;
  for (int e = 0; e < POOL; ++e) chi2 += (count[e] - expect) * (count[e] - expect) / expect;
  CHECK(chi2 < 20.5);  // chi-square 0.999 quantile with 5 degrees of freedom
}

TEST_CASE("emoe: hierarchical router loss equals -KL(q || U) computed directly") {
  const int N = 7, E = 5;
  auto logits = randn(N * E, 43, 2.0);
  Arena arena(1 << 16);
  Tape tape(arena);
  Var x = leaf(tape, {N, E}, DType::F64, logits);
  RouterOptions o;
  o.lb_coef = 0;
  o.z_coef = 0;
  o.kl_coef = 1;
  RouterOut r = router(tape, x, 2, o);
  double kl = 0;
  for (int n = 0; n < N; ++n) {
    double mx = -1e300, s = 0;
    for (int e = 0; e < E; ++e) mx = std::max(mx, logits[n * E + e]);
    for (int e = 0; e < E; ++e) s += std::exp(logits[n * E + e] - mx);
    for (int e = 0; e < E; ++e) {
      double q = std::exp(logits[n * E + e] - mx) / s;
      kl += q * std::log(q / (1.0 / E)) / N;
    }
  }
  CHECK(read(r.kl)[0] == doctest::Approx(kl).epsilon(1e-12));
  CHECK(read(r.aux.val)[0] == doctest::Approx(-kl).epsilon(1e-12));
  CHECK(kl > 0);
}

TEST_CASE("emoe schedule: pools uniform in [k_train, k_ideal], deterministic, default k_ideal") {
  KScheduleConfig c;
  c.strategy = KStrategy::EMoE;
  c.k_fixed = 2;
  c.seed = 5;
  KSchedule s(c, 4, 16);
  CHECK(s.k_ideal() == 6);
  CHECK(s.draw(3, 0) == std::vector<int>(4, 2));
  std::vector<double> hist(7, 0);
  int draws = 0;
  for (int step = 0; step < 3000; ++step)
    for (int l : s.pools(step, 0)) {
      REQUIRE(l >= 2);
      REQUIRE(l <= 6);
      hist[l] += 1;
      ++draws;
    }
  double expect = draws / 5.0, chi2 = 0;
  for (int k = 2; k <= 6; ++k) chi2 += (hist[k] - expect) * (hist[k] - expect) / expect;
  CHECK(chi2 < 18.5);  // 0.999 quantile, 4 degrees of freedom
  KSchedule again(c, 4, 16);
  CHECK(again.pools(17, 1) == s.pools(17, 1));
  CHECK(again.sample_key(17, 1) == s.sample_key(17, 1));
  CHECK(s.sample_key(17, 1) != s.sample_key(18, 1));
  c.k_ideal = 20;
  CHECK_THROWS_AS(KSchedule(c, 4, 16), Error);
  CHECK(parse_k_strategy("emoe") == KStrategy::EMoE);
}
