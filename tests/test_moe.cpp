// The MoE layer: one expert with K = 1 equals a dense SwiGLU MLP (forward, and every gradient
// against finite differences of a naive loop), and permute -> unpermute is the identity
// (forward and backward), including skewed routing that leaves experts empty.
#include <doctest/doctest.h>

#include "model/moe.h"
#include "model/moe_ops.h"
#include "parallel/dispatch_plan.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

// Naive dense SwiGLU in double: y = W2 (silu(W1 x) * (W3 x)), W13 = [W1; W3] (2H,C), W2 (C,H).
std::vector<double> dense_swiglu(const std::vector<double>& x, const std::vector<double>& w13,
                                 const std::vector<double>& w2, int N, int C, int H) {
  std::vector<double> y(N * C, 0.0);
  for (int n = 0; n < N; ++n) {
    std::vector<double> a(H);
    for (int j = 0; j < H; ++j) {
      double g = 0, u = 0;
      for (int c = 0; c < C; ++c) {
        g += w13[j * C + c] * x[n * C + c];
        u += w13[(H + j) * C + c] * x[n * C + c];
      }
      a[j] = g / (1 + std::exp(-g)) * u;
    }
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < H; ++j) y[n * C + c] += w2[c * H + j] * a[j];
  }
  return y;
}

double weighted(const std::vector<double>& y, const std::vector<double>& R) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += y[i] * R[i];
  return s;
}

}  // namespace

TEST_CASE("MoE with one expert and K = 1 equals a dense SwiGLU MLP, forward and gradients") {
  const int N = 6, C = 5, H = 4;
  for (DType dt : {DType::F64, DType::F32}) {
    CAPTURE(dtype_name(dt));
    ParamStore ps(dt);
    LocalDispatcher d(1);
    MoELayer moe(ps, "moe", C, H, d);
    ps.finalize();
    auto w13 = randn(2 * H * C, 5, 0.5), w2 = randn(C * H, 6, 0.5), wr = randn(C, 7);
    auto x = randn(N * C, 8);
    fill(ps.value(moe.experts().w13_id()), w13);
    fill(ps.value(moe.experts().w2_id()), w2);
    fill(ps.value(moe.router().weight_id()), wr);
    Arena arena(1 << 18);
    Tape tape(arena);
    RouterOptions o;
    o.lb_coef = 0.5;  // constant for E = 1 (f = P = 1): contributes no gradient
    o.z_coef = 0;     // z-loss would add a router gradient a dense MLP does not have
    Var xv = leaf(tape, {N, C}, dt, x);
    Var aux;
    Var y = moe.forward(tape, xv, 1, o, &aux, nullptr);
    auto ref = dense_swiglu(x, w13, w2, N, C, H);
    double tol = dt == DType::F64 ? 1e-12 : 1e-5;
    CHECK(rel_err(read(y.val), ref) < tol);
    CHECK(read(aux.val)[0] == doctest::Approx(0.5));
    // Gradients of <R, y> against central differences of the naive loop.
    auto R = randn(N * C, 9);
    fill(y.grad, R);
    fill(aux.grad, {1.0});
    tape.backward_seeded();
    auto fd = [&](std::vector<double>& v) {
      std::vector<double> g(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        double keep = v[i];
        v[i] = keep + 1e-6;
        double lp = weighted(dense_swiglu(x, w13, w2, N, C, H), R);
        v[i] = keep - 1e-6;
        double lm = weighted(dense_swiglu(x, w13, w2, N, C, H), R);
        v[i] = keep;
        g[i] = (lp - lm) / 2e-6;
      }
      return g;
    };
    double gt = dt == DType::F64 ? 1e-7 : 1e-3;
    CHECK(rel_err(read(xv.grad), fd(x)) < gt);
    CHECK(rel_err(read(ps.grad(moe.experts().w13_id())), fd(w13)) < gt);
    CHECK(rel_err(read(ps.grad(moe.experts().w2_id())), fd(w2)) < gt);
    for (double g : read(ps.grad(moe.router().weight_id()))) CHECK(g == doctest::Approx(0.0));
  }
}

TEST_CASE("permute then unpermute is the identity, forward and backward, with empty experts") {
  const int N = 9, C = 3, E = 6;
  struct Routing {
    const char* name;
    int K;
    std::vector<int> ids;
  };
  std::vector<Routing> cases = {
      {"K=1 balanced", 1, {0, 1, 2, 3, 4, 5, 0, 1, 2}},
      {"K=2 skewed: experts 1,3,5 empty", 2, {0, 2, 2, 0, 4, 0, 2, 4, 0, 2, 4, 2, 0, 4, 2, 4, 0, 2}},
      {"K=3 with unused slots (-1)", 3, {5, -1, -1, 5, 0, -1, 0, 5, 3, 5, 3, 0, 3, -1, -1, 0, 3, 5, 5, 0, -1, 3, 5, 0, 0, -1, -1}},
  };
  for (auto& rc : cases) {
    CAPTURE(rc.name);
    Arena arena(1 << 16);
    Tape tape(arena);
    LocalDispatcher d(E);
    auto x = randn(N * C, 21);
    Var xv = leaf(tape, {N, C}, DType::F64, x);
    // Weights: equal over the used slots of each token, so they sum to one.
    std::vector<double> w(N * rc.K, 0.0);
    for (int n = 0; n < N; ++n) {
      int used = 0;
      for (int k = 0; k < rc.K; ++k) used += rc.ids[n * rc.K + k] >= 0;
      for (int k = 0; k < rc.K; ++k) w[n * rc.K + k] = rc.ids[n * rc.K + k] >= 0 ? 1.0 / used : 0.0;
    }
    Var wv = leaf(tape, {N, rc.K}, DType::F64, w, false);
    DispatchPlan plan;
    Var rows = d.permute(tape, xv, Tensor{rc.ids.data(), {N, rc.K}, DType::I32}, plan);
    const int* counts = plan.counts.ptr<int32_t>();
    const int* offsets = plan.offsets.ptr<int32_t>();
    // Rows are grouped by expert: every row of expert e's block comes from a token routed to e.
    auto rv = read(rows.val);
    for (int e = 0; e < E; ++e) {
      CHECK(counts[e] == offsets[e + 1] - offsets[e]);
      for (int r = offsets[e]; r < offsets[e + 1]; ++r) {
        int n = plan.send_tok.ptr<int32_t>()[r];
        bool routed = false;
        for (int k = 0; k < rc.K; ++k) routed |= rc.ids[n * rc.K + k] == e;
        CHECK(routed);
        for (int c = 0; c < C; ++c) CHECK(rv[r * C + c] == x[n * C + c]);
      }
    }
    Var back = d.unpermute(tape, rows, wv, plan);
    CHECK(rel_err(read(back.val), x) < 1e-14);
    auto R = randn(N * C, 22);
    fill(back.grad, R);
    tape.backward_seeded();
    CHECK(rel_err(read(xv.grad), R) < 1e-14);
  }
}

namespace {

// grouped_linear over one block of rows with one expert's weights, no segments: y, dx, dw.
struct Plain {
  std::vector<double> y, dx, dw;
};
Plain plain_block(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& R, int n,
                  int I, int O) {
  Arena arena(1 << 20);
  Tape tape(arena);
  Tensor off = arena_i32(arena, 2);
  off.ptr<int32_t>()[0] = 0;
  off.ptr<int32_t>()[1] = n;
  Var xv = leaf(tape, {n, I}, DType::F32, x), wv = leaf(tape, {1, O, I}, DType::F32, w);
  Var y = grouped_linear(tape, xv, wv, off);
  fill(y.grad, R);
  tape.backward_seeded();
  return {read(y.val), read(xv.grad), read(wv.grad)};
}

std::vector<double> slice(const std::vector<double>& v, int64_t from, int64_t n) {
  return std::vector<double>(v.begin() + from, v.begin() + from + n);
}

}  // namespace

// Under expert parallelism an expert's rows come from several ranks (DispatchPlan::segments).
// Each (expert, source) segment must give the bits of the same rows alone on one rank, and the
// weight gradient the pairwise tree over the segments' own gradients: what one rank's
// micro-batch tree computes (parallel/grad_tree.h). Segment sizes include 0, 1 and uneven ones.
TEST_CASE("grouped_linear with source segments: each segment alone, the weight gradient a fixed tree") {
  const int E = 2, I = 24, O = 40;
  for (int S : {2, 3}) {
    CAPTURE(S);
    const std::vector<int> sizes = S == 2 ? std::vector<int>{5, 0, 1, 37} : std::vector<int>{3, 17, 1, 0, 2, 40};
    std::vector<int> seg(1, 0);
    for (int n : sizes) seg.push_back(seg.back() + n);
    const int M = seg.back();
    auto x = randn(size_t(M) * I, 31), w = randn(size_t(E) * O * I, 32, 0.3), R = randn(size_t(M) * O, 33);
    Arena arena(1 << 20);
    Tape tape(arena);
    Tensor off = arena_i32(arena, E + 1), segt = arena_i32(arena, E * S + 1);
    for (int e = 0; e <= E; ++e) off.ptr<int32_t>()[e] = seg[e * S];
    for (int i = 0; i <= E * S; ++i) segt.ptr<int32_t>()[i] = seg[i];
    Var xv = leaf(tape, {M, I}, DType::F32, x), wv = leaf(tape, {E, O, I}, DType::F32, w);
    Var y = grouped_linear(tape, xv, wv, off, segt);
    fill(y.grad, R);
    tape.backward_seeded();
    const auto yg = read(y.val), dxg = read(xv.grad), dwg = read(wv.grad);
    for (int e = 0; e < E; ++e) {
      CAPTURE(e);
      std::vector<std::vector<float>> parts;  // each segment's own dw, in float
      for (int s = 0; s < S; ++s) {
        const int r0 = seg[e * S + s], n = seg[e * S + s + 1] - r0;
        std::vector<float> part(size_t(O) * I, 0.0f);
        if (n > 0) {
          const Plain p = plain_block(slice(x, int64_t(r0) * I, int64_t(n) * I), slice(w, int64_t(e) * O * I, O * I),
                                      slice(R, int64_t(r0) * O, int64_t(n) * O), n, I, O);
          CHECK(slice(yg, int64_t(r0) * O, int64_t(n) * O) == p.y);  // bit for bit
          CHECK(slice(dxg, int64_t(r0) * I, int64_t(n) * I) == p.dx);
          part.assign(p.dw.begin(), p.dw.end());
        }
        parts.push_back(part);
      }
      // The tree: S = 2: s0 + s1; S = 3: (s0 + s1) + s2.
      std::vector<float> want(size_t(O) * I);
      for (size_t i = 0; i < want.size(); ++i) {
        want[i] = parts[0][i] + parts[1][i];
        if (S == 3) want[i] = want[i] + parts[2][i];
      }
      const auto got = slice(dwg, int64_t(e) * O * I, O * I);
      CHECK(got == std::vector<double>(want.begin(), want.end()));
      // And it is the gradient: against a double loop.
      double worst = 0;
      for (int o = 0; o < O; ++o)
        for (int i = 0; i < I; ++i) {
          double ref = 0;
          for (int r = seg[e * S]; r < seg[(e + 1) * S]; ++r) ref += R[size_t(r) * O + o] * x[size_t(r) * I + i];
          worst = std::max(worst, std::abs(got[size_t(o) * I + i] - ref) / (1 + std::abs(ref)));
        }
      CHECK(worst < 1e-5);
    }
  }
}
