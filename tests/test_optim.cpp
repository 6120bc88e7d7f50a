// Tests for optim/: AdamW against a naive double-precision loop written here, bias correction,
// global gradient norm and clipping, and the warmup + cosine learning-rate schedule.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "optim/adamw.h"
#include "optim/schedule.h"
#include "core/check.h"
#include "runtime/rng.h"

using namespace anyk;

namespace {

// Message of the anyk::Error thrown by f, or "" if it does not throw.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

double rel_err(double a, double b) { return std::fabs(a - b) / std::max(1e-12, std::fabs(b)); }

}  // namespace

TEST_CASE("adamw matches a naive double reference over 5 steps with a decayed and a plain span") {
  const int n = 37;
  const AdamWConfig cfg{3e-4, 0.9, 0.95, 1e-8, 0.1};
  CounterRng rng(11);
  std::vector<float> p(n), g(n);
  for (float& x : p) x = static_cast<float>(rng.normal());
  std::vector<double> rp(p.begin(), p.end()), rm(n, 0.0), rv(n, 0.0);
  // Elements [0, 20) decayed, [20, 37) not: e.g. a matrix then its norm weights.
  AdamW opt(cfg);
  const int r = opt.add_region(p.data(), g.data(), n, {{20, 17, false}, {0, 20, true}});
  CHECK(r == 0);
  CHECK(opt.region_size(r) == n);
  const double lrs[5] = {1e-3, 2e-3, 3e-3, 2e-3, 1e-3};
  for (int t = 1; t <= 5; ++t) {
    for (float& x : g) x = static_cast<float>(rng.normal() * 0.1);
    opt.step(lrs[t - 1]);
    const double lr = lrs[t - 1];
    for (int i = 0; i < n; ++i) {
      const double gi = g[i];
      rm[i] = cfg.beta1 * rm[i] + (1 - cfg.beta1) * gi;
      rv[i] = cfg.beta2 * rv[i] + (1 - cfg.beta2) * gi * gi;
      const double mhat = rm[i] / (1 - std::pow(cfg.beta1, t));
      const double vhat = rv[i] / (1 - std::pow(cfg.beta2, t));
      if (i < 20) rp[i] -= lr * cfg.weight_decay * rp[i];
      rp[i] -= lr * mhat / (std::sqrt(vhat) + cfg.eps);
    }
  }
  CHECK(opt.step_count() == 5);
  for (int i = 0; i < n; ++i) {
    INFO("element " << i);
    CHECK(rel_err(p[i], rp[i]) < 1e-6);
    CHECK(rel_err(opt.m(r)[i], rm[i]) < 1e-6);
    CHECK(rel_err(opt.v(r)[i], rv[i]) < 1e-6);
  }
}

TEST_CASE("adamw bias correction: first step with a constant gradient moves each param by lr") {
  const int n = 8;
  std::vector<float> p(n, 1.0f), g(n);
  for (int i = 0; i < n; ++i) g[i] = (i % 2 ? -1.0f : 1.0f) * static_cast<float>(0.01 * (i + 1));
  AdamW opt(AdamWConfig{1e-2, 0.9, 0.999, 1e-12, 0.0});
  opt.add_region(p.data(), g.data(), n, {{0, n, true}});
  opt.step(1e-2);
  for (int i = 0; i < n; ++i) {
    // mhat = g, vhat = g^2, so the update is lr * sign(g).
    const double expect = 1.0 - 1e-2 * (g[i] > 0 ? 1.0 : -1.0);
    CHECK(p[i] == doctest::Approx(expect).epsilon(1e-6));
  }
  // Step 2 with the same gradient: still exactly lr * sign(g) after correction.
  opt.step(1e-2);
  for (int i = 0; i < n; ++i)
    CHECK(p[i] == doctest::Approx(1.0 - 2e-2 * (g[i] > 0 ? 1.0 : -1.0)).epsilon(1e-6));
}

TEST_CASE("adamw: elements outside spans are frozen; step count can be restored") {
  std::vector<float> p(10, 1.0f), g(10, 1.0f);
  AdamW opt(AdamWConfig{});
  opt.add_region(p.data(), g.data(), 10, {{2, 3, false}});
  opt.step(1e-2);
  CHECK(p[0] == 1.0f);
  CHECK(p[9] == 1.0f);
  CHECK(p[3] < 1.0f);
  opt.set_step_count(100);
  CHECK(opt.step_count() == 100);
  CHECK(error_of([&] { opt.m(3); }).find("region index 3") != std::string::npos);
}

TEST_CASE("adamw rejects bad spans and configs") {
  std::vector<float> p(10), g(10);
  AdamW opt(AdamWConfig{});
  CHECK(error_of([&] { opt.add_region(p.data(), g.data(), 10, {{5, 6, true}}); })
            .find("outside the region") != std::string::npos);
  CHECK(error_of([&] { opt.add_region(p.data(), g.data(), 10, {{0, 6, true}, {5, 2, false}}); })
            .find("overlaps") != std::string::npos);
  CHECK(error_of([&] { opt.add_region(p.data(), g.data(), 10, {}); }).find("hint:") !=
        std::string::npos);
  CHECK(error_of([] { AdamW a(AdamWConfig{3e-4, 1.0, 0.95, 1e-8, 0.1}); }).find("beta1 = 1") !=
        std::string::npos);
}

TEST_CASE("global_grad_norm matches a naive loop; clipping scales to max_norm") {
  // One buffer large enough to take the OpenMP path, one small.
  const int64_t n1 = 100000, n2 = 13;
  std::vector<float> a(n1), b(n2);
  CounterRng rng(3);
  for (float& x : a) x = static_cast<float>(rng.normal());
  for (float& x : b) x = static_cast<float>(rng.normal() * 10);
  double naive = 0.0;
  for (float x : a) naive += double(x) * x;
  for (float x : b) naive += double(x) * x;
  naive = std::sqrt(naive);
  const double norm = global_grad_norm({{a.data(), n1}, {b.data(), n2}});
  CHECK(norm == doctest::Approx(naive).epsilon(1e-12));

  const double max_norm = 5.0;
  const double pre = clip_grad_norm({{a.data(), n1}, {b.data(), n2}}, max_norm);
  CHECK(pre == doctest::Approx(naive).epsilon(1e-12));
  CHECK(global_grad_norm({{a.data(), n1}, {b.data(), n2}}) == doctest::Approx(max_norm).epsilon(1e-6));

  // Small grads and disabled clipping leave values untouched.
  std::vector<float> c = {0.1f, -0.2f, 0.3f}, c0 = c;
  CHECK(clip_grad_norm({{c.data(), 3}}, 1.0) == doctest::Approx(std::sqrt(0.14)).epsilon(1e-6));
  CHECK(c == c0);
  std::vector<float> d = {30.0f, 40.0f}, d0 = d;
  CHECK(clip_grad_norm({{d.data(), 2}}, 0.0) == doctest::Approx(50.0));
  CHECK(d == d0);
  CHECK(clip_grad_norm({{d.data(), 2}}, 5.0) == doctest::Approx(50.0));
  CHECK(d[0] == doctest::Approx(3.0));
  CHECK(d[1] == doctest::Approx(4.0));
}

TEST_CASE("lr schedule: warmup, peak, cosine midpoint, floor") {
  LrSchedule s{1e-3, 1e-4, 10, 111};
  s.validate();
  CHECK(s.at(0) == doctest::Approx(1e-4));   // max/warmup
  CHECK(s.at(4) == doctest::Approx(5e-4));
  CHECK(s.at(9) == doctest::Approx(1e-3));   // end of warmup reaches max
  CHECK(s.at(10) == doctest::Approx(1e-3));  // cosine starts at max
  CHECK(s.at(60) == doctest::Approx((1e-3 + 1e-4) / 2));  // d = 100, midpoint at 10 + 50
  CHECK(s.at(110) == doctest::Approx(1e-4));
  CHECK(s.at(100000) == doctest::Approx(1e-4));
  for (int64_t t = 10; t < 110; ++t) CHECK(s.at(t + 1) <= s.at(t));
  LrSchedule flat{1e-3, 1e-3, 0, 5};
  CHECK(flat.at(0) == doctest::Approx(1e-3));
  CHECK(flat.at(3) == doctest::Approx(1e-3));
}

TEST_CASE("lr schedule validate rejects bad values") {
  CHECK(error_of([] { LrSchedule{1e-3, 1e-2, 0, 10}.validate(); }).find("min_lr = 0.01") !=
        std::string::npos);
  CHECK(error_of([] { LrSchedule{1e-3, 0, -1, 10}.validate(); }).find("warmup = -1") !=
        std::string::npos);
  CHECK(error_of([] { LrSchedule{1e-3, 0, 0, 0}.validate(); }).find("total = 0") !=
        std::string::npos);
  CHECK(error_of([] { LrSchedule{-1e-3, -2e-3, 0, 10}.validate(); }).find("max_lr = -0.001") !=
        std::string::npos);
  CHECK(error_of([] { LrSchedule{1e-3, 0, 20, 10}.validate(); }).find("warmup = 20") !=
        std::string::npos);
  CHECK(error_of([] { LrSchedule{1e-3, 0, 10, 10}.validate(); }).empty());
}
