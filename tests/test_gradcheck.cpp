// Table-driven gradient check of every differentiable op: analytic gradients from the tape
// against central finite differences computed in double precision, for the f64 kernels (tight)
// and the f32 kernels (the training path, to 1e-3). The table must cover every library's op list
// (kRuntimeOps, kModelOps, kParallelOps) exactly.
#include <doctest/doctest.h>

#include <functional>
#include <set>
#include <string>

#include "model/moe_ops.h"
#include "parallel/all_to_all.h"
#include "parallel/comm.h"
#include "runtime/ops/ops.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

struct OpCase {
  std::string op;                   // the name in an op list
  std::string variant;              // what this case exercises
  std::vector<Shape> inputs;        // differentiable inputs
  double input_scale = 1.0;         // std of the random input values
  // Applies the op(s) to the inputs; returns the outputs whose weighted sum is the loss.
  std::function<std::vector<Var>(Tape&, std::vector<Var>&)> f;
};

// Fixed integer side inputs used by several cases.
const int kIds[6] = {3, 0, 3, 1, 4, 2};          // embedding ids into V = 5
const int kTargets[4] = {2, 0, 4, 1};             // cross-entropy targets, V = 5
const int kRows[7] = {2, 0, 2, 1, 3, 0, 2};       // gather rows of a (4,C) input, repeated
const int kTok[5] = {1, 0, 1, 2, 0};              // scatter rows -> token
const int kWidx[5] = {3, 0, 2, 4, 1};             // and weight slot
const int kOffsets[4] = {0, 3, 3, 7};             // three experts, the middle one empty
const int kSelfCounts[1] = {4};                   // all_to_all_rows on one rank: 4 rows to itself
int32_t kExpertCounts[5] = {3, 0, 4, 2, 3};       // load-balance f_e: 12 assignments, one expert idle

std::vector<OpCase> table() {
  std::vector<OpCase> t;
  t.push_back({"embedding", "repeated ids", {{5, 4}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{embedding(tp, kIds, 6, in[0])};
               }});
  t.push_back({"linear", "x and w", {{3, 4}, {5, 4}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{linear(tp, in[0], in[1])};
               }});
  t.push_back({"linear", "3-d input", {{2, 3, 4}, {2, 4}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{linear(tp, in[0], in[1])};
               }});
  t.push_back({"add", "a + b, and a + a", {{3, 4}, {3, 4}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{add(tp, in[0], in[1]), add(tp, in[0], in[0])};
               }});
  t.push_back({"scale", "s = -0.7", {{2, 5}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{scale(tp, in[0], -0.7)};
               }});
  t.push_back({"rmsnorm", "x and w", {{3, 6}, {6}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{rmsnorm(tp, in[0], in[1], 1e-5)};
               }});
  t.push_back({"rope", "2 of 3 heads rotated", {{2, 4, 3, 6}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{rope(tp, in[0], 2, 100.0)};
               }});
  t.push_back({"attention", "B=2 T=5 C=8 NH=2", {{2, 5, 24}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{attention(tp, in[0], 2)};
               }});
  t.push_back({"swiglu", "M=3 H=4", {{3, 8}}, 1.5, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{swiglu(tp, in[0])};
               }});
  t.push_back({"cross_entropy", "mean", {{4, 5}}, 2.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{cross_entropy(tp, in[0], kTargets)};
               }});
  t.push_back({"cross_entropy", "sum / 10", {{4, 5}}, 2.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{cross_entropy(tp, in[0], kTargets, 10.0)};
               }});
  auto router_case = [](std::string variant, int K, RouterOptions o) {
    return OpCase{"router", variant, {{6, 5}}, 2.0, [K, o](Tape& tp, std::vector<Var>& in) {
                    Gating g = router_gating(tp, in[0], K, o);
                    return std::vector<Var>{g.weights, g.probs, g.lse};
                  }};
  };
  RouterOptions o;
  o.lb_coef = 0.3;
  o.z_coef = 0.2;
  o.kl_coef = 0.1;
  t.push_back(router_case("K=2 renormalised, lb+z+kl", 2, o));
  t.push_back(router_case("K=1", 1, o));
  t.push_back(router_case("K=E", 5, o));
  RouterOptions raw = o;
  raw.renormalize = false;
  t.push_back(router_case("K=3 raw softmax weights", 3, raw));
  RouterOptions tp = o;
  tp.top_p = 0.6;
  t.push_back(router_case("top_p 0.6, K <= 4", 4, tp));
  RouterOptions em = o;
  em.pool = 4;
  em.sample_key = 77;
  t.push_back(router_case("EMoE: K=2 drawn from a pool of 4", 2, em));
  t.push_back({"router_lb_loss", "one expert idle", {{6, 5}}, 0.5, [](Tape& tp, std::vector<Var>& in) {
                 Tensor counts{kExpertCounts, {5}, DType::I32};
                 return std::vector<Var>{router_lb_loss(tp, in[0], counts)};
               }});
  t.push_back({"router_z_loss", "N=6", {{6}}, 2.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{router_z_loss(tp, in[0])};
               }});
  t.push_back({"router_kl_loss", "q <= 0 entries skipped", {{6, 5}}, 0.5, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{router_kl_loss(tp, in[0])};
               }});
  t.push_back({"router_aux", "0.3 lb + 0.2 z - 0.1 kl", {{1}, {1}, {1}}, 1.0,
               [o](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{router_aux(tp, in[0], in[1], in[2], o, in[0].dtype())};
               }});
  t.push_back({"gather_rows", "repeated rows", {{4, 3}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{gather_rows(tp, in[0], ids_on(tp, kRows, 7, in[0].val.device))};
               }});
  t.push_back({"scatter_add_rows", "weighted", {{5, 3}, {5}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{scatter_add_rows(tp, in[0], &in[1], ids_on(tp, kTok, 5, in[0].val.device), ids_on(tp, kWidx, 5, in[0].val.device), 3)};
               }});
  t.push_back({"scatter_add_rows", "unweighted", {{5, 3}}, 1.0, [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{scatter_add_rows(tp, in[0], nullptr, ids_on(tp, kTok, 5, in[0].val.device), ids_on(tp, kWidx, 5, in[0].val.device), 3)};
               }});
  t.push_back({"grouped_linear", "3 experts, one empty", {{7, 4}, {3, 5, 4}}, 1.0,
               [](Tape& tp, std::vector<Var>& in) {
                 return std::vector<Var>{grouped_linear(tp, in[0], in[1], host_i32(kOffsets, 4))};
               }});
  t.push_back({"all_to_all_rows", "one rank (MPI_COMM_SELF)", {{4, 3}}, 1.0,
               [](Tape& tp, std::vector<Var>& in) {
                 static Comm self = Comm::self();
                 const Tensor counts{const_cast<int*>(kSelfCounts), {1}, DType::I32};
                 return std::vector<Var>{all_to_all_rows(tp, in[0], counts, counts, self)};
               }});
  // A checkpointed segment (runtime/tape.h): h = linear(x, w) and swiglu(h) as outputs, h also
  // consumed inside the segment. Evaluated directly when grad is off (the finite differences).
  t.push_back({"checkpoint", "two outputs, one also used inside", {{3, 4}, {6, 4}}, 1.0,
               [](Tape& tp, std::vector<Var>& in) {
                 static const CheckpointSegment seg{[](const void*, Tape& t, const Var* x, Var* y, bool) {
                                            y[1] = linear(t, x[0], x[1]);
                                            y[0] = swiglu(t, y[1]);
                                          },
                                          nullptr};
                 Var y[2];
                 if (!tp.grad_enabled()) {
                   seg.run(nullptr, tp, in.data(), y, true);
                 } else {
                   y[0] = tp.make({3, 3}, in[0].dtype(), true);
                   y[1] = tp.make({3, 6}, in[0].dtype(), true);
                   checkpoint(tp, seg, in.data(), 2, y, 2);
                 }
                 return std::vector<Var>{y[0], y[1]};
               }});
  return t;
}

// Loss = sum over outputs of <R_o, out_o> with fixed random R, evaluated in double.
double loss_of(const OpCase& c, const std::vector<std::vector<double>>& vals, DType dt) {
  Arena arena(1 << 20);
  Tape tape(arena);
  tape.set_grad_enabled(false);
  std::vector<Var> in;
  for (size_t i = 0; i < c.inputs.size(); ++i) in.push_back(leaf(tape, c.inputs[i], dt, vals[i], false));
  std::vector<Var> outs = c.f(tape, in);
  double L = 0;
  for (size_t o = 0; o < outs.size(); ++o) {
    auto v = read(outs[o].val);
    auto R = randn(v.size(), 1000 + o);
    for (size_t j = 0; j < v.size(); ++j) L += R[j] * v[j];
  }
  return L;
}

std::vector<std::vector<double>> analytic(const OpCase& c, const std::vector<std::vector<double>>& vals,
                                          DType dt, Tape* keep = nullptr) {
  Arena arena(1 << 20);
  Tape tape(arena);
  std::vector<Var> in;
  for (size_t i = 0; i < c.inputs.size(); ++i) in.push_back(leaf(tape, c.inputs[i], dt, vals[i], true));
  std::vector<Var> outs = c.f(tape, in);
  for (size_t o = 0; o < outs.size(); ++o) {
    REQUIRE(outs[o].requires_grad());
    fill(outs[o].grad, randn(outs[o].val.numel(), 1000 + o));
  }
  for (size_t i = 0; i < tape.size(); ++i) CHECK(tape.op_at(i) == c.op);  // the op records itself
  tape.backward_seeded();
  std::vector<std::vector<double>> g;
  for (auto& v : in) g.push_back(read(v.grad));
  return g;
}

}  // namespace

TEST_CASE("gradcheck: the table covers every op of every library, and only those") {
  std::set<std::string> in_table;
  for (auto& c : table()) in_table.insert(c.op);
  std::set<std::string> all;
  for (auto op : kRuntimeOps) all.insert(std::string(op));
  for (auto op : kModelOps) all.insert(std::string(op));
  for (auto op : kParallelOps) all.insert(std::string(op));
  for (auto& op : all) CHECK_MESSAGE(in_table.count(op), "op '" << op << "' has no gradient check");
  for (auto& op : in_table) CHECK_MESSAGE(all.count(op), "table entry '" << op << "' is not an op");
  for (auto& op : all) CHECK_MESSAGE(is_registered_op(op), "op '" << op << "' is not registered");
}

TEST_CASE("gradcheck: every op against central finite differences in double") {
  for (const OpCase& c : table()) {
    CAPTURE(c.op);
    CAPTURE(c.variant);
    std::vector<std::vector<double>> vals;
    for (size_t i = 0; i < c.inputs.size(); ++i)
      vals.push_back(randn(c.inputs[i].numel(), 17 + i, c.input_scale));
    // Finite differences, double precision.
    const double eps = 1e-6;
    std::vector<std::vector<double>> fd(vals.size());
    for (size_t i = 0; i < vals.size(); ++i) {
      fd[i].resize(vals[i].size());
      for (size_t j = 0; j < vals[i].size(); ++j) {
        auto p = vals, m = vals;
        p[i][j] += eps;
        m[i][j] -= eps;
        fd[i][j] = (loss_of(c, p, DType::F64) - loss_of(c, m, DType::F64)) / (2 * eps);
      }
    }
    auto g64 = analytic(c, vals, DType::F64);
    auto g32 = analytic(c, vals, DType::F32);
    for (size_t i = 0; i < vals.size(); ++i) {
      CAPTURE(i);
      double e64 = rel_err(g64[i], fd[i]), e32 = rel_err(g32[i], fd[i]);
      CHECK(e64 < 1e-6);
      CHECK(e32 < 1e-3);
      double mx = 0;
      for (double v : fd[i]) mx = std::max(mx, std::abs(v));
      CHECK(mx > 1e-3);  // the check is not vacuous: the gradient is not all zero
    }
  }
}

TEST_CASE("gradcheck: an unregistered op cannot be recorded") {
  Arena arena(4096);
  Tape tape(arena);
  CHECK_THROWS_AS(tape.record("not_an_op", [] {}), Error);
}
