// The CUDA grouped_linear's GEMM plan (kernels/cuda/expert_gemm_plan.cuh), checked on the host
// (no GPU, no CUDA headers): the descriptors every strategy issues (loop, streams, grouped) are
// executed in double by a naive column-major GEMM with cuBLAS' argument rules, and the result is
// compared with the direct definition out_e = x_e w_e^T, dx_e += dY_e w_e, dw_e += dY_e^T x_e.
// Zero-row experts, E = 1, all rows in one expert, the streams' round-robin and bad offsets.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "kernels/cuda/expert_gemm_plan.cuh"
#include "kernels/cuda_api.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::cuda::xgemm;
using anyk::test::randn;

namespace {

using V = std::vector<double>;

// cuBLAS' gemm in double, column-major, alpha = 1: C (m,n) = op(A) op(B) + beta C, operands at
// their offsets. Rejects what cuBLAS rejects (leading dimensions below the minimum, k < 1 with
// those minima) and fails the test when an element outside its buffer would be touched.
void run_gemm(const Gemm& g, const V& A, const V& B, V& C) {
  REQUIRE((g.m > 0 && g.n > 0 && g.k > 0));
  REQUIRE(g.lda >= std::max(1, g.ta ? g.k : g.m));
  REQUIRE(g.ldb >= std::max(1, g.tb ? g.n : g.k));
  REQUIRE(g.ldc >= std::max(1, g.m));
  REQUIRE((g.beta == 0 || g.beta == 1));
  auto at = [](const V& x, int64_t i) {
    REQUIRE_MESSAGE((i >= 0 && i < int64_t(x.size())), "element " << i << " outside a buffer of " << x.size());
    return x[size_t(i)];
  };
  for (int i = 0; i < g.m; ++i)
    for (int j = 0; j < g.n; ++j) {
      double s = 0;
      for (int k = 0; k < g.k; ++k) {
        const int64_t ai = g.a_off + (g.ta ? k + int64_t(i) * g.lda : i + int64_t(k) * g.lda);
        const int64_t bi = g.b_off + (g.tb ? j + int64_t(k) * g.ldb : k + int64_t(j) * g.ldb);
        s += at(A, ai) * at(B, bi);
      }
      const int64_t ci = g.c_off + i + int64_t(j) * g.ldc;
      (void)at(C, ci);
      C[size_t(ci)] = s + (g.beta ? C[size_t(ci)] : 0.0);
    }
}

struct Problem {
  std::vector<int32_t> off;
  int E, I, O, M;
  V x, w, dout;
};

Problem make(const std::vector<int32_t>& counts, int I, int O, uint64_t seed) {
  Problem p{{0}, int(counts.size()), I, O, 0, {}, {}, {}};
  for (int32_t c : counts) p.off.push_back(p.off.back() + c);
  p.M = p.off.back();
  p.x = randn(size_t(p.M) * I, seed);
  p.w = randn(size_t(p.E) * O * I, seed + 1);
  p.dout = randn(size_t(p.M) * O, seed + 2);
  return p;
}

// The definition, row by row: expert e(r) is the one whose range holds row r.
void reference(const Problem& p, V& out, V& dx, V& dw) {
  for (int e = 0; e < p.E; ++e)
    for (int r = p.off[e]; r < p.off[e + 1]; ++r)
      for (int o = 0; o < p.O; ++o)
        for (int i = 0; i < p.I; ++i) {
          const double wv = p.w[(size_t(e) * p.O + o) * p.I + i];
          out[size_t(r) * p.O + o] += p.x[size_t(r) * p.I + i] * wv;
          dx[size_t(r) * p.I + i] += p.dout[size_t(r) * p.O + o] * wv;
          dw[(size_t(e) * p.O + o) * p.I + i] += p.dout[size_t(r) * p.O + o] * p.x[size_t(r) * p.I + i];
        }
}

double max_abs_diff(const V& a, const V& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

// Plans and executes the three kinds; out starts as a sentinel (the forward assigns), dx and dw
// from random values (the backward adds). Returns the plans for further checks.
std::vector<std::vector<Gemm>> check_problem(const Problem& p) {
  const V dx0 = randn(size_t(p.M) * p.I, 7), dw0 = randn(size_t(p.E) * p.O * p.I, 8);
  V out(size_t(p.M) * p.O, 77.0), dx = dx0, dw = dw0;
  std::vector<std::vector<Gemm>> plans(3);
  plan(plans[0], p.off.data(), p.E, p.I, p.O, Kind::Forward);
  plan(plans[1], p.off.data(), p.E, p.I, p.O, Kind::Dx);
  plan(plans[2], p.off.data(), p.E, p.I, p.O, Kind::Dw);
  for (const Gemm& g : plans[0]) run_gemm(g, p.w, p.x, out);
  for (const Gemm& g : plans[1]) run_gemm(g, p.w, p.dout, dx);
  for (const Gemm& g : plans[2]) run_gemm(g, p.x, p.dout, dw);
  V ro(out.size(), 0.0), rdx = dx0, rdw = dw0;
  reference(p, ro, rdx, rdw);
  CHECK(max_abs_diff(out, ro) <= 1e-12);
  CHECK(max_abs_diff(dx, rdx) <= 1e-12);
  CHECK(max_abs_diff(dw, rdw) <= 1e-12);
  return plans;
}

}  // namespace

TEST_CASE("xgemm plan: executed descriptors equal the definition, zero-row experts skipped") {
  const std::vector<std::vector<int32_t>> splits = {
      {13, 0, 40, 1, 29}, {0, 70, 0, 0, 3}, {5, 0, 17, 3, 0, 8, 1, 12, 4}, {0, 0, 0, 9}, {9, 0, 0, 0}};
  for (const auto& counts : splits) {
    CAPTURE(counts.size());
    const Problem p = make(counts, 7, 5, 11);
    const auto plans = check_problem(p);
    const size_t nonempty = size_t(std::count_if(counts.begin(), counts.end(), [](int c) { return c > 0; }));
    for (const auto& pl : plans) {
      REQUIRE(pl.size() == nonempty);
      for (size_t j = 0; j < pl.size(); ++j) {
        CHECK(counts[size_t(pl[j].expert)] > 0);
        CHECK(pl[j].stream == int(j) % kSideStreams);  // round-robin over the non-empty experts
        if (j > 0) CHECK(pl[j].expert > pl[j - 1].expert);
      }
    }
    // Under `streams` two GEMMs of one kind on different streams must not write the same element.
    std::set<int64_t> written;
    for (const Gemm& g : plans[0])
      for (int j = 0; j < g.n; ++j)
        for (int i = 0; i < g.m; ++i) CHECK(written.insert(g.c_off + i + int64_t(j) * g.ldc).second);
  }
}

TEST_CASE("xgemm plan: E = 1, all rows in one expert, empty and degenerate sizes") {
  check_problem(make({23}, 4, 6, 21));                  // E = 1
  check_problem(make({0, 0, 31, 0, 0, 0}, 3, 8, 22));   // every row in one expert
  check_problem(make({1, 1, 1}, 1, 1, 23));             // I = O = 1, one row each
  std::vector<Gemm> g{Gemm{}};
  const std::vector<int32_t> none{0, 0, 0};
  plan(g, none.data(), 2, 4, 4, Kind::Forward);  // no rows: no GEMM (and the old content is cleared)
  CHECK(g.empty());
  const std::vector<int32_t> some{0, 3, 5};
  plan(g, some.data(), 2, 0, 4, Kind::Dw);  // I = 0: nothing to multiply (the caller zeroes out)
  CHECK(g.empty());
  plan(g, some.data(), 0, 4, 4, Kind::Dx);  // E = 0
  CHECK(g.empty());
}

TEST_CASE("xgemm plan: offsets that are not a non-decreasing split are refused by name") {
  std::vector<Gemm> g;
  const std::vector<int32_t> dec{0, 5, 3, 9};
  CHECK_THROWS_WITH_AS(plan(g, dec.data(), 3, 4, 4, Kind::Forward),
                       doctest::Contains("offsets[1] = 5, offsets[2] = 3 decrease"), Error);
  const std::vector<int32_t> neg{-2, 0, 4};
  CHECK_THROWS_WITH_AS(plan(g, neg.data(), 2, 4, 4, Kind::Dw), doctest::Contains("offsets[0] = -2 is negative"),
                       Error);
}

TEST_CASE("xgemm strategy names") {
  for (Strategy s : {Strategy::Loop, Strategy::Streams, Strategy::Grouped})
    CHECK(parse_strategy(strategy_name(s)) == s);
  CHECK_THROWS_WITH_AS(parse_strategy("batched"),
                       doctest::Contains("ANYK_EXPERT_GEMM=batched is not an expert GEMM strategy hint: choose "
                                         "loop, streams or grouped"),
                       Error);
}

TEST_CASE("cuda::set_expert_gemm keeps a valid choice and refuses another by name") {
  const std::string before = cuda::expert_gemm();
  CHECK(before == "loop");  // the default (ANYK_EXPERT_GEMM is only read by cuda::init)
  cuda::set_expert_gemm("grouped");
  CHECK(cuda::expert_gemm() == "grouped");
  CHECK_THROWS_WITH_AS(cuda::set_expert_gemm("Loop"), doctest::Contains("ANYK_EXPERT_GEMM=Loop is not"), Error);
  CHECK(cuda::expert_gemm() == "grouped");  // a refused name changes nothing
  cuda::set_expert_gemm(before);
}
