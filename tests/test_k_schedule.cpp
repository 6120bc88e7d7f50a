// Tests for model/k_schedule: ranges and reproducibility of every K strategy, the structure of
// global/micro/layer draws, chi-square checks of the layer and layer_weighted distributions, and
// top_p_count against a naive sort-and-accumulate loop written here.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "model/k_schedule.h"
#include "model/moe_ops.h"
#include "core/check.h"
#include "runtime/ops/ops.h"
#include "runtime/rng.h"

using namespace anyk;

namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

KScheduleConfig make_cfg(KStrategy s, int k_min, int k_max, uint64_t seed = 7) {
  KScheduleConfig c;
  c.strategy = s;
  c.k_min = k_min;
  c.k_max = k_max;
  c.seed = seed;
  return c;
}

// Pearson chi-square statistic of observed counts against expected probabilities.
double chi_square(const std::vector<int>& counts, const std::vector<double>& probs, int total) {
  double x2 = 0.0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = probs[i] * total;
    x2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  return x2;
}

template <class T>
int naive_top_p(const std::vector<T>& probs, double p, int k_min, int k_max) {
  std::vector<double> s(probs.begin(), probs.end());
  std::sort(s.begin(), s.end(), std::greater<double>());
  double acc = 0.0;
  int k = static_cast<int>(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    acc += s[i];
    if (acc >= p) {
      k = static_cast<int>(i) + 1;
      break;
    }
  }
  return std::clamp(k, k_min, k_max);
}

const KStrategy kAll[] = {KStrategy::Fixed, KStrategy::Global,        KStrategy::Micro,
                          KStrategy::Layer, KStrategy::LayerWeighted, KStrategy::TopP};

}  // namespace

TEST_CASE("every strategy stays in range and is a pure function of (seed, step, micro, layer)") {
  const int L = 6, E = 8;
  for (KStrategy s : kAll) {
    INFO("strategy " << k_strategy_name(s));
    KScheduleConfig c = make_cfg(s, 2, 5);
    c.k_fixed = 3;
    const KSchedule a(c, L, E), b(c, L, E);
    for (int64_t step = 0; step < 200; ++step)
      for (int micro = 0; micro < 4; ++micro) {
        const std::vector<int> ka = a.draw(step, micro);
        REQUIRE(ka.size() == size_t(L));
        CHECK(ka == b.draw(step, micro));
        CHECK(ka == a.draw(step, micro));
        for (int k : ka) {
          if (s == KStrategy::Fixed) CHECK(k == 3);
          else if (s == KStrategy::TopP) CHECK(k == 5);
          else CHECK((k >= 2 && k <= 5));
        }
      }
    CHECK(a.per_token() == (s == KStrategy::TopP));
  }
}

TEST_CASE("different seeds give different draws") {
  const KSchedule a(make_cfg(KStrategy::Layer, 1, 4, 1), 4, 8), b(make_cfg(KStrategy::Layer, 1, 4, 2), 4, 8);
  int differ = 0;
  for (int64_t step = 0; step < 50; ++step) differ += a.draw(step, 0) != b.draw(step, 0);
  CHECK(differ > 25);
}

TEST_CASE("global: one K per step across layers and micro-batches, varying across steps") {
  const KSchedule ks(make_cfg(KStrategy::Global, 1, 4), 5, 8);
  std::vector<int> seen(5, 0);
  for (int64_t step = 0; step < 100; ++step) {
    const int k0 = ks.draw(step, 0)[0];
    ++seen[k0];
    for (int micro = 0; micro < 4; ++micro)
      for (int k : ks.draw(step, micro)) CHECK(k == k0);
  }
  for (int k = 1; k <= 4; ++k) CHECK(seen[k] > 0);
}

TEST_CASE("micro: one K per (step, micro) across layers, varying across micro-batches") {
  const KSchedule ks(make_cfg(KStrategy::Micro, 1, 4), 5, 8);
  int varied_steps = 0;
  for (int64_t step = 0; step < 50; ++step) {
    std::vector<int> per_micro;
    for (int micro = 0; micro < 8; ++micro) {
      const std::vector<int> k = ks.draw(step, micro);
      for (int x : k) CHECK(x == k[0]);
      per_micro.push_back(k[0]);
    }
    varied_steps += std::any_of(per_micro.begin(), per_micro.end(),
                                [&](int x) { return x != per_micro[0]; });
  }
  CHECK(varied_steps > 40);
}

TEST_CASE("layer: layers differ, and K is uniform by chi-square over 20000 draws") {
  const int L = 4;
  const KSchedule ks(make_cfg(KStrategy::Layer, 1, 4, 12345), L, 8);
  std::vector<int> counts(4, 0);
  int differing = 0;
  const int steps = 5000;  // 5000 steps x 4 layers = 20000 draws
  for (int64_t step = 0; step < steps; ++step) {
    const std::vector<int> k = ks.draw(step, static_cast<int>(step % 3));
    differing += std::any_of(k.begin(), k.end(), [&](int x) { return x != k[0]; });
    for (int x : k) ++counts[x - 1];
  }
  CHECK(differing > steps / 2);
  const double x2 = chi_square(counts, std::vector<double>(4, 0.25), steps * L);
  INFO("chi-square " << x2 << " counts " << counts[0] << " " << counts[1] << " " << counts[2] << " "
                     << counts[3]);
  CHECK(x2 < 16.266);  // chi-square 0.999 quantile, 3 dof
}

TEST_CASE("layer_weighted follows k^(1/tau) by chi-square (tau = 2, k in [1, 6])") {
  const std::vector<double> probs = layer_weighted_probs(1, 6, 2.0);
  double z = 0.0;
  for (int k = 1; k <= 6; ++k) z += std::sqrt(double(k));
  for (int k = 1; k <= 6; ++k) CHECK(probs[k - 1] == doctest::Approx(std::sqrt(double(k)) / z));

  KScheduleConfig c = make_cfg(KStrategy::LayerWeighted, 1, 6, 99);
  c.tau = 2.0;
  const int L = 8;
  const KSchedule ks(c, L, 8);
  std::vector<int> counts(6, 0);
  const int steps = 6000;
  for (int64_t step = 0; step < steps; ++step)
    for (int x : ks.draw(step, 1)) ++counts[x - 1];
  const double x2 = chi_square(counts, probs, steps * L);
  INFO("chi-square " << x2);
  CHECK(x2 < 20.515);  // chi-square 0.999 quantile, 5 dof
  // And it is clearly not uniform: k = 6 is drawn about sqrt(6) times as often as k = 1.
  CHECK(counts[5] > 2 * counts[0]);
}

TEST_CASE("top_p_count matches a naive sort-and-accumulate loop") {
  CounterRng rng(5);
  for (int trial = 0; trial < 500; ++trial) {
    const int E = 2 + trial % 15;
    const double temp = 0.2 + 3.0 * rng.uniform();
    std::vector<double> pd(E);
    double sum = 0.0;
    for (double& x : pd) sum += x = std::exp(rng.normal() / temp);
    for (double& x : pd) x /= sum;
    std::vector<float> pf(pd.begin(), pd.end());
    const double p = (trial % 10 == 0) ? 1.0 : 0.05 + 0.9 * rng.uniform();
    const int k_max = 1 + static_cast<int>(uniform_int(rng.next(), E));
    const int k_min = 1 + static_cast<int>(uniform_int(rng.next(), k_max));
    INFO("trial " << trial << " E " << E << " p " << p << " k in [" << k_min << ", " << k_max << "]");
    CHECK(top_p_count(pd.data(), E, p, k_min, k_max) == naive_top_p(pd, p, k_min, k_max));
    CHECK(top_p_count(pf.data(), E, p, k_min, k_max) == naive_top_p(pf, p, k_min, k_max));
  }
}

TEST_CASE("top_p_count edge cases: p = 1, ties, clamping") {
  const std::vector<float> u(8, 0.125f);
  CHECK(top_p_count(u.data(), 8, 1.0, 1, 8) == 8);
  CHECK(top_p_count(u.data(), 8, 1.0, 1, 5) == 5);   // all E clamped to k_max
  CHECK(top_p_count(u.data(), 8, 0.5, 1, 8) == 4);   // exact tie sums: 4 * 0.125 = 0.5
  CHECK(top_p_count(u.data(), 8, 0.01, 3, 8) == 3);  // clamped up to k_min
  const std::vector<double> t = {0.2, 0.3, 0.2, 0.3};
  CHECK(top_p_count(t.data(), 4, 0.5, 1, 4) == 2);
  CHECK(top_p_count(t.data(), 4, 0.65, 1, 4) == 3);
  CHECK(top_p_count(t.data(), 4, 0.3, 1, 4) == 1);
  const std::vector<double> peaked = {0.01, 0.95, 0.04};
  CHECK(top_p_count(peaked.data(), 3, 0.1, 1, 3) == 1);
  CHECK(top_p_count(peaked.data(), 3, 0.96, 1, 3) == 2);
}

TEST_CASE("strategy names round-trip; unknown names and bad configs are rejected") {
  for (KStrategy s : kAll) CHECK(parse_k_strategy(k_strategy_name(s)) == s);
  const std::string msg = error_of([] { parse_k_strategy("layerwise"); });
  CHECK(msg.find("layerwise") != std::string::npos);
  for (const char* n : {"fixed", "global", "micro", "layer", "layer_weighted", "top_p"})
    CHECK(msg.find(n) != std::string::npos);

  const std::string kmax = error_of([] { KSchedule(make_cfg(KStrategy::Layer, 1, 9), 4, 8); });
  CHECK(kmax.find("k_max = 9") != std::string::npos);
  CHECK(kmax.find("hint:") != std::string::npos);
  CHECK(error_of([] { KSchedule(make_cfg(KStrategy::Layer, 3, 2), 4, 8); }).find("k_min = 3") !=
        std::string::npos);
  CHECK(error_of([] { KSchedule(make_cfg(KStrategy::Micro, 0, 2), 4, 8); }).find("k_min = 0") !=
        std::string::npos);
  KScheduleConfig f = make_cfg(KStrategy::Fixed, 1, 4);
  f.k_fixed = 9;
  CHECK(error_of([&] { KSchedule(f, 4, 8); }).find("k_fixed = 9") != std::string::npos);
  KScheduleConfig w = make_cfg(KStrategy::LayerWeighted, 1, 4);
  w.tau = 0.0;
  CHECK(error_of([&] { KSchedule(w, 4, 8); }).find("tau = 0") != std::string::npos);
  KScheduleConfig tp = make_cfg(KStrategy::TopP, 1, 4);
  tp.top_p = 1.5;
  CHECK(error_of([&] { KSchedule(tp, 4, 8); }).find("top_p = 1.5") != std::string::npos);
  tp.top_p = 0.0;
  CHECK(!error_of([&] { KSchedule(tp, 4, 8); }).empty());
}
