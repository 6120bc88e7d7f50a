// The CUDA grouped_linear's GEMM plan (kernels/cuda/expert_gemm_plan.cuh), checked on the host
// (no GPU, no CUDA headers): the descriptors every strategy issues (loop, streams, grouped) are
// executed in double by a naive column-major GEMM with cuBLAS' argument rules, and the result is
// compared with the direct definition out_e = x_e w_e^T, dx_e += dY_e w_e, dw_e += dY_e^T x_e.
// Zero-row experts, E = 1, all rows in one expert, the streams' round-robin and bad offsets; the
// padded-row layout of the bf16 operand copies (same results, padding never read, every operand
// pointer and leading dimension 16-byte aligned).
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

// rows x cols, row-major and dense, copied with row stride ld; the padding is NaN, so a GEMM that
// read it would poison its result.
V with_stride(const V& a, int64_t rows, int cols, int ld) {
  V r(size_t(rows) * size_t(ld), std::nan(""));
  for (int64_t i = 0; i < rows; ++i)
    for (int c = 0; c < cols; ++c) r[size_t(i * ld + c)] = a[size_t(i * cols + c)];
  return r;
}

// Plans and executes the three kinds; out starts as a sentinel (the forward assigns), dx and dw
// from random values (the backward adds). With `padded`, A and B are read from copies in
// bf16_layout, as moe.cu's bf16 path does (here in double: only the element strides matter).
// Returns the plans for further checks.
std::vector<std::vector<Gemm>> check_problem(const Problem& p, bool padded = false) {
  const V dx0 = randn(size_t(p.M) * p.I, 7), dw0 = randn(size_t(p.E) * p.O * p.I, 8);
  V out(size_t(p.M) * p.O, 77.0), dx = dx0, dw = dw0;
  const Layout ld = padded ? bf16_layout(p.I, p.O) : natural_layout(p.I, p.O);
  const V x = with_stride(p.x, p.M, p.I, ld.x), dout = with_stride(p.dout, p.M, p.O, ld.d),
          w = with_stride(p.w, int64_t(p.E) * p.O, p.I, ld.w);
  std::vector<std::vector<Gemm>> plans(3);
  plan(plans[0], p.off.data(), p.E, p.I, p.O, Kind::Forward, ld);
  plan(plans[1], p.off.data(), p.E, p.I, p.O, Kind::Dx, ld);
  plan(plans[2], p.off.data(), p.E, p.I, p.O, Kind::Dw, ld);
  for (const Gemm& g : plans[0]) run_gemm(g, w, x, out);
  for (const Gemm& g : plans[1]) run_gemm(g, w, dout, dx);
  for (const Gemm& g : plans[2]) run_gemm(g, x, dout, dw);
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

// Awkward splits (zero-row experts, odd row counts) and odd I, O for the alignment checks.
const std::vector<std::vector<int32_t>> kAwkward = {{13, 0, 40, 1, 29}, {1, 1, 1, 1, 1, 1, 1}, {0, 3, 0, 5, 7, 0, 9},
                                                    {2, 0, 0, 1}, {37}, {0, 0, 0, 11, 0}};
const std::vector<std::pair<int, int>> kShapes = {{33, 5}, {7, 13}, {1, 1}, {8, 3}, {5, 8}, {63, 65}, {2048, 5632}};

// Byte offset of an operand at element offset off in a buffer of elem-byte elements.
int64_t bytes_at(int64_t off, int elem) { return off * elem; }

TEST_CASE("xgemm plan: the padded bf16 layout computes the same, never reading the padding") {
  for (const auto& counts : kAwkward)
    for (const auto& io : {std::pair{33, 5}, std::pair{7, 13}, std::pair{1, 1}, std::pair{9, 8}}) {
      const int I = io.first, O = io.second;  // by name: clang 14 refuses a structured binding in CAPTURE
      CAPTURE(I);
      CAPTURE(O);
      const Problem p = make(counts, I, O, 31);
      check_problem(p, true);
      check_problem(p, false);
    }
}

TEST_CASE("xgemm plan: every bf16 operand pointer and leading dimension is 16-byte aligned") {
  for (const auto& counts : kAwkward)
    for (const auto& io : kShapes) {
      const int I = io.first, O = io.second;  // by name: clang 14 refuses a structured binding in CAPTURE
      CAPTURE(counts.size());
      CAPTURE(I);
      CAPTURE(O);
      std::vector<int32_t> off{0};
      for (int32_t c : counts) off.push_back(off.back() + c);
      const Layout ld = bf16_layout(I, O);
      CHECK(ld.x >= I);
      CHECK(ld.d >= O);
      CHECK(ld.w >= I);
      CHECK(ld.x - I < 8);  // at most 7 elements of padding per row
      CHECK(ld.d - O < 8);
      for (Kind kind : {Kind::Forward, Kind::Dx, Kind::Dw}) {
        std::vector<Gemm> pl;
        plan(pl, off.data(), int(counts.size()), I, O, kind, ld);
        for (const Gemm& g : pl) {
          CAPTURE(g.expert);
          CAPTURE(int(kind));
          // A and B are the bf16 copies (2-byte elements) at a 256-byte aligned workspace base.
          CHECK(bytes_at(g.a_off, 2) % kOperandAlign == 0);
          CHECK(bytes_at(g.b_off, 2) % kOperandAlign == 0);
          CHECK(g.lda * 2 % kOperandAlign == 0);
          CHECK(g.ldb * 2 % kOperandAlign == 0);
        }
      }
    }
}

TEST_CASE("xgemm plan: the dense layout misaligns bf16 operands (why the copies are padded)") {
  // Split {13, 0, 40, 1, 29}, I = 33: with dense rows the dw GEMM of expert 2 reads A = x_2 at
  // element 13 * 33, byte 858 of the bf16 copy: not 16-byte aligned (issue 21, item 6).
  const std::vector<int32_t> off{0, 13, 13, 53, 54, 83};
  std::vector<Gemm> pl;
  plan(pl, off.data(), 5, 33, 5, Kind::Dw);
  REQUIRE(pl.size() == 4);
  CHECK(pl[1].expert == 2);
  CHECK(bytes_at(pl[1].a_off, 2) == 858);
  CHECK(bytes_at(pl[1].a_off, 2) % kOperandAlign != 0);
  plan(pl, off.data(), 5, 33, 5, Kind::Dw, bf16_layout(33, 5));
  CHECK(bytes_at(pl[1].a_off, 2) == 13 * 40 * 2);  // rows padded to 40 elements: byte 1040
  CHECK(bytes_at(pl[1].a_off, 2) % kOperandAlign == 0);
}

TEST_CASE("xgemm plan: row strides below the row length are refused") {
  std::vector<Gemm> g;
  const std::vector<int32_t> off{0, 3, 5};
  CHECK_THROWS_WITH_AS(plan(g, off.data(), 2, 8, 4, Kind::Forward, Layout{7, 4, 8}),
                       doctest::Contains("row strides x 7, dout 4, w 8 below I = 8, O = 4"), Error);
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
