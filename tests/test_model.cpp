// The whole MoE LM on a tiny config: analytic gradients of every parameter against central
// finite differences in double, for several per-layer K patterns; f64 to 1e-6 and the f32
// training path to 1e-3. Also: deterministic initialisation and layout-independent init.
#include <doctest/doctest.h>

#include "model/lm.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

ModelConfig tiny(DType dt) {
  ModelConfig c;
  c.vocab = 11;
  c.dim = 8;
  c.layers = 2;
  c.heads = 2;
  c.experts = 4;
  c.expert_hidden = 6;
  c.seq_len = 5;
  c.init_std = 0.4;  // large enough that router choices are far from ties
  c.router.lb_coef = 0.05;
  c.router.z_coef = 0.01;
  c.router.kl_coef = 0.02;
  c.dtype = dt;
  return c;
}

const int B = 2, T = 5;
const int kIn[B * T] = {1, 4, 7, 2, 9, 10, 0, 3, 3, 5};
const int kTg[B * T] = {4, 7, 2, 9, 10, 0, 3, 3, 5, 6};

double loss_value(const LM& lm, std::span<const int> k) {
  Arena arena(1 << 20);
  Tape tape(arena);
  tape.set_grad_enabled(false);
  Var loss = lm.forward(tape, kIn, kTg, B, T, k);
  return read(loss.val)[0];
}

std::vector<double> grads(LM& lm, std::span<const int> k) {
  Arena arena(1 << 20);
  Tape tape(arena);
  lm.params().zero_grad();
  Var loss = lm.forward(tape, kIn, kTg, B, T, k);
  tape.backward(loss);
  std::vector<double> g;
  for (int id = 0; id < lm.params().size(); ++id) {
    auto v = read(lm.params().grad(id));
    g.insert(g.end(), v.begin(), v.end());
  }
  return g;
}

}  // namespace

TEST_CASE("whole-model gradients match finite differences for per-layer K patterns") {
  const std::vector<std::vector<int>> patterns = {{1, 2}, {4, 1}, {2, 3}, {4, 4}};
  LocalDispatcher d64(4), d32(4);
  LM m64(tiny(DType::F64), d64), m32(tiny(DType::F32), d32);
  m64.init(123);
  m32.init(123);
  for (auto& k : patterns) {
    CAPTURE(k[0]);
    CAPTURE(k[1]);
    // Central differences over every parameter of the f64 model.
    std::vector<double> fd;
    ParamStore& ps = m64.params();
    for (int id = 0; id < ps.size(); ++id) {
      double* p = ps.value(id).ptr<double>();
      for (int64_t i = 0; i < ps.value(id).numel(); ++i) {
        double keep = p[i], h = 1e-6;
        p[i] = keep + h;
        double lp = loss_value(m64, k);
        p[i] = keep - h;
        double lm = loss_value(m64, k);
        p[i] = keep;
        fd.push_back((lp - lm) / (2 * h));
      }
    }
    auto g64 = grads(m64, k), g32 = grads(m32, k);
    REQUIRE(g64.size() == fd.size());
    // Per parameter tensor, so that a small tensor cannot hide behind a large one.
    size_t off = 0;
    for (int id = 0; id < ps.size(); ++id) {
      CAPTURE(ps.info(id).name);
      size_t n = size_t(ps.value(id).numel());
      std::vector<double> a(g64.begin() + off, g64.begin() + off + n),
          b(g32.begin() + off, g32.begin() + off + n), f(fd.begin() + off, fd.begin() + off + n);
      CHECK(rel_err(a, f, 1e-6) < 1e-6);
      CHECK(rel_err(b, f, 1e-6) < 1e-3);
      off += n;
    }
    CHECK(loss_value(m32, k) == doctest::Approx(loss_value(m64, k)).epsilon(1e-5));
  }
}

TEST_CASE("initialisation is deterministic and depends on the seed") {
  LocalDispatcher d(4);
  LM a(tiny(DType::F32), d), b(tiny(DType::F32), d), c(tiny(DType::F32), d);
  a.init(7);
  b.init(7);
  c.init(8);
  const int k[2] = {2, 2};
  CHECK(loss_value(a, k) == loss_value(b, k));
  CHECK(loss_value(a, k) != loss_value(c, k));
}

TEST_CASE("the loss changes with K, and any K in [1,E] per layer is accepted") {
  LocalDispatcher d(4);
  LM m(tiny(DType::F64), d);
  m.init(5);
  std::vector<double> losses;
  for (int k0 = 1; k0 <= 4; ++k0)
    for (int k1 = 1; k1 <= 4; ++k1) {
      const int k[2] = {k0, k1};
      losses.push_back(loss_value(m, k));
    }
  CHECK(losses[0] != losses.back());
  const int bad[2] = {0, 5};
  CHECK_THROWS_AS(loss_value(m, bad), Error);
}
