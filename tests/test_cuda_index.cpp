// The CUDA dense kernels' index math, checked on the host (no GPU, no CUDA headers): the GPU
// pipelines of kernels/cuda (linear, attention forward/backward, cached attention, RoPE) are
// replayed in double with host loops that call the same kernels/cuda/dense_index.cuh helpers
// (GEMM descriptors, head packing, RoPE element) and a small cuBLAS emulator, then compared with
// the CPU kernels (kernels/cpu). A layout or leading-dimension mistake in those helpers shows up
// here as a wrong result, an argument cuBLAS would reject, or an element read out of its buffer.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "kernels/cuda/dense_index.cuh"
#include "test_util.h"

using namespace anyk;
using namespace anyk::cuda::dense;

namespace {

using V = std::vector<double>;
using CSpan = std::span<const double>;
using Span = std::span<double>;
constexpr double kTol = 1e-12;

// ---- cuBLAS emulator ----
// cublas{S,D}gemm and cublas{S,D}gemmStridedBatched in double: for b < batch,
//   C_b (m,n) = alpha op(X1_b) op(X2_b) + beta C_b,  X1_b = x1 + b*s1, X2_b = x2 + b*s2, C_b = c + b*sc,
// all column-major: element (r, col) of a matrix with leading dimension ld is at r + col*ld;
// op(X) = X^T when its flag is set (then X is stored (k,m) for x1, (n,k) for x2). beta == 0
// means C is not read (cuBLAS semantics). Leading dimensions below the minimum are rejected as
// cuBLAS does (CUBLAS_STATUS_INVALID_VALUE); every element touched must lie inside its buffer.
void cublas_gemm(const ColGemm& g, double alpha, CSpan x1, long long s1, CSpan x2, long long s2, double beta,
                 Span c, long long sc, int batch) {
  REQUIRE((g.m >= 0 && g.n >= 0 && g.k >= 0 && batch >= 0));
  REQUIRE(g.ld1 >= std::max(1, g.t1 ? g.k : g.m));
  REQUIRE(g.ld2 >= std::max(1, g.t2 ? g.n : g.k));
  REQUIRE(g.ldc >= std::max(1, g.m));
  bool in_range = true;
  auto get = [&](CSpan x, long long i) {
    if (i < 0 || i >= (long long)x.size()) return in_range = false, 0.0;
    return x[size_t(i)];
  };
  for (int b = 0; b < batch; ++b)
    for (int i = 0; i < g.m; ++i)
      for (int j = 0; j < g.n; ++j) {
        double s = 0;
        for (int k = 0; k < g.k; ++k) {
          const double a1 = get(x1, b * s1 + (g.t1 ? k + (long long)i * g.ld1 : i + (long long)k * g.ld1));
          const double a2 = get(x2, b * s2 + (g.t2 ? j + (long long)k * g.ld2 : k + (long long)j * g.ld2));
          s += a1 * a2;
        }
        const long long ci = b * sc + i + (long long)j * g.ldc;
        if (ci < 0 || ci >= (long long)c.size()) {
          in_range = false;
          continue;
        }
        c[size_t(ci)] = alpha * s + (beta == 0 ? 0 : beta * c[size_t(ci)]);
      }
  CHECK_MESSAGE(in_range, "a GEMM touched an element outside its buffer");
}

// Row-major GEMM as kernels/cuda/dense_gemm.cuh gemm_rm issues it: K == 0 is done by hand (C = 0
// when beta == 0), otherwise one cuBLAS call with the operands swapped by to_col_major.
void gemm_rm(const RowGemm& r, double alpha, CSpan A, long long sA, CSpan B, long long sB, double beta, Span C,
             long long sC, int batch = 1) {
  if (r.M <= 0 || r.N <= 0 || batch <= 0) return;
  if (r.K <= 0) {
    if (beta == 0)
      for (int b = 0; b < batch; ++b)
        for (int i = 0; i < r.M; ++i)
          for (int j = 0; j < r.N; ++j) C[size_t(b * sC + (long long)i * r.ldc + j)] = 0;
    return;
  }
  cublas_gemm(to_col_major(r), alpha, B, sB, A, sA, beta, C, sC, batch);
}

// ---- replays of the device pipelines (kernels/cuda/dense.cu, dense_attention.cuh) ----
// causal_softmax_k: row r is query r % nrows and sees keys 0..p0 + r % nrows; the rest become 0.
void softmax_rows(Span a, long long rows, int nrows, int L, int p0) {
  for (long long r = 0; r < rows; ++r) {
    const int last = p0 + int(r % nrows);
    double* ar = a.data() + r * L;
    double mx = ar[0], s = 0;
    for (int j = 0; j <= last; ++j) mx = std::max(mx, ar[j]);
    for (int j = 0; j <= last; ++j) s += (ar[j] = std::exp(ar[j] - mx));
    for (int j = 0; j < L; ++j) ar[j] = j <= last ? ar[j] / s : 0;
  }
}

// pack_heads_k: dst[p] (B*NH, T, D) = head p of src (B, T, row), heads of part p from column p*C.
void pack_heads(std::vector<V*> dst, const V& src, int B, int Tn, int NH, int D, long long row) {
  const long long hd = (long long)B * NH * Tn * D, C = (long long)NH * D;
  for (long long i = 0; i < hd * (long long)dst.size(); ++i) {
    const int p = int(i / hd);
    const long long e = i - p * hd;
    const BHTD x = split_head_major(e, NH, Tn, D);
    (*dst[p])[size_t(e)] = src.at(size_t(token_major(x.b, x.t, x.h, x.d, Tn, row, p * C, D)));
  }
}

void attention_forward(V& out, V& att, const V& qkv, int B, int Tn, int C, int NH) {
  const int D = C / NH, BH = B * NH;
  const long long hd = (long long)BH * Tn * D, sq = (long long)Tn * D, sa = (long long)Tn * Tn;
  V q(hd), k(hd), v(hd), o(hd);
  pack_heads({&q, &k, &v}, qkv, B, Tn, NH, D, 3LL * C);
  const AttentionGemms gm = attention_gemms(Tn, D);
  gemm_rm(gm.qk, 1 / std::sqrt(double(D)), q, sq, k, sq, 0, att, sa, BH);
  softmax_rows(att, (long long)BH * Tn, Tn, Tn, 0);
  gemm_rm(gm.av, 1, att, sa, v, sq, 0, o, sq, BH);
  for (long long i = 0; i < hd; ++i) {  // unpack_heads_k
    const BHTD x = split_token_major(i, Tn, NH * D, D);
    out.at(size_t(i)) = o.at(size_t(head_major(x.b, x.h, x.t, x.d, NH, Tn, D)));
  }
}

void attention_backward(V& dqkv, V& scratch, const V& dout, const V& qkv, const V& att, int B, int Tn, int C,
                        int NH) {
  const int D = C / NH, BH = B * NH;
  const long long hd = (long long)BH * Tn * D, sq = (long long)Tn * D, sa = (long long)Tn * Tn;
  const double scale = 1 / std::sqrt(double(D));
  V q(hd), k(hd), v(hd), dO(hd), dq(hd), dk(hd), dv(hd);
  pack_heads({&q, &k, &v}, qkv, B, Tn, NH, D, 3LL * C);
  pack_heads({&dO}, dout, B, Tn, NH, D, C);
  const AttentionGemms gm = attention_gemms(Tn, D);
  gemm_rm(gm.dv, 1, att, sa, dO, sq, 0, dv, sq, BH);
  gemm_rm(gm.da, 1, dO, sq, v, sq, 0, scratch, sa, BH);
  for (long long r = 0; r < (long long)BH * Tn; ++r) {  // causal_softmax_backward_k
    const int last = int(r % Tn);
    double* dr = scratch.data() + r * Tn;
    const double* ar = att.data() + r * Tn;
    double dot = 0;
    for (int j = 0; j <= last; ++j) dot += dr[j] * ar[j];
    for (int j = 0; j < Tn; ++j) dr[j] = j <= last ? ar[j] * (dr[j] - dot) * scale : 0;
  }
  gemm_rm(gm.dq, 1, scratch, sa, k, sq, 0, dq, sq, BH);
  gemm_rm(gm.dk, 1, scratch, sa, q, sq, 0, dk, sq, BH);
  for (long long i = 0; i < 3 * hd; ++i) {  // unpack_add_qkv_k
    const BHTD x = split_token_major(i, Tn, 3 * NH * D, D);
    const int part = x.h / NH;
    const V& src = part == 0 ? dq : part == 1 ? dk : dv;
    dqkv.at(size_t(i)) += src.at(size_t(head_major(x.b, x.h - part * NH, x.t, x.d, NH, Tn, D)));
  }
}

// q: the whole buffer holding the n query rows (row stride q_stride, q at its column 0).
void attention_cached_forward(V& out, V& scores, const V& q, int q_stride, const V& kc, const V& vc, int n, int len,
                              int C, int NH) {
  const int D = C / NH;
  const long long ss = (long long)n * len;
  const CachedGemms gm = cached_gemms(n, len, D, q_stride, C);
  gemm_rm(gm.qk, 1 / std::sqrt(double(D)), q, D, kc, D, 0, scores, ss, NH);
  softmax_rows(scores, (long long)NH * n, n, len, len - n);
  gemm_rm(gm.av, 1, scores, ss, vc, D, 0, out, D, NH);
}

// rope_k: every element of out from rope_value (assigned, or added when accumulate).
void rope_run(V& out, const V& x, const V& cos_t, const V& sin_t, int B, int Tn, int NHx, int D, int nrot,
              double sign, bool accumulate) {
  const long long rows = (long long)B * Tn, row = (long long)NHx * D;
  for (long long e = 0; e < rows * row; ++e) {
    const long long bt = e / row, j = e % row, t = bt % Tn;
    double y;
    if (!rope_value(y, x.data() + bt * row, cos_t.data() + t * (D / 2), sin_t.data() + t * (D / 2), j, D, nrot, sign))
      continue;
    out[size_t(e)] = accumulate ? out[size_t(e)] + y : y;
  }
}

uint64_t seed = 1;
V rnd(size_t n) { return test::randn(n, seed++); }

void expect_close(const V& replay, const V& cpu) {
  REQUIRE(replay.size() == cpu.size());
  CHECK(test::rel_err(replay, cpu) <= kTol);
}

}  // namespace

TEST_CASE("the cuBLAS emulator follows cuBLAS's column-major convention (hand-worked 2x3 * 3x2)") {
  // A = [1 2 3; 4 5 6], B = [1 0; 0 1; 1 1], A B = [4 5; 10 11]: column-major {4, 10, 5, 11}.
  const V a = {1, 4, 9, 2, 5, 9, 3, 6, 9};  // A with ld 3 (row 2 is padding)
  const V at = {1, 2, 3, 4, 5, 6};          // A^T (3x2), ld 3
  const V b = {1, 0, 1, 0, 1, 1};           // B (3x2), ld 3
  const V bt = {1, 0, 0, 1, 1, 1};          // B^T (2x3), ld 2
  for (int t1 = 0; t1 < 2; ++t1)
    for (int t2 = 0; t2 < 2; ++t2) {
      CAPTURE(t1);
      CAPTURE(t2);
      V c(4, 7.0);
      const ColGemm g{bool(t1), bool(t2), 2, 2, 3, 3, t2 ? 2 : 3, 2};
      cublas_gemm(g, 1, t1 ? at : a, 0, t2 ? bt : b, 0, 0, c, 0, 1);
      CHECK(c == V{4, 10, 5, 11});
    }
  // Strided batch of 2 with alpha 2, beta 1: C_b = 2 A B_b + C_b, where B_1 = 2 B_0 (stride 6).
  V b2 = b;
  for (double x : b) b2.push_back(2 * x);
  V c = {1, 1, 1, 1, 1, 1, 1, 1};
  cublas_gemm(ColGemm{false, false, 2, 2, 3, 3, 3, 2}, 2, a, 0, b2, 6, 1, c, 4, 2);
  CHECK(c == V{9, 21, 11, 23, 17, 41, 21, 45});
}

TEST_CASE("linear: the forward, dx and dw GEMM descriptors replay linear_forward / linear_backward") {
  const int shapes[][3] = {{5, 7, 3}, {1, 1, 1}, {4, 16, 8}, {3, 5, 9}, {8, 2, 1}};
  for (const auto& sh : shapes) {
    const int N = sh[0], I = sh[1], O = sh[2];  // not a structured binding: CAPTURE is a lambda
    CAPTURE(N);
    CAPTURE(I);
    CAPTURE(O);
    const V x = rnd(N * I), w = rnd(O * I), dout = rnd(N * O);
    const LinearGemms g = linear_gemms(N, I, O);
    V out1 = rnd(N * O), out2 = out1;
    gemm_rm(g.fwd, 1, x, 0, w, 0, 0, out1, 0);
    cpu::linear_forward(out2.data(), x.data(), w.data(), N, I, O);
    expect_close(out1, out2);
    V dx1 = rnd(N * I), dw1 = rnd(O * I), dx2 = dx1, dw2 = dw1;  // both accumulate
    gemm_rm(g.dx, 1, dout, 0, w, 0, 1, dx1, 0);
    gemm_rm(g.dw, 1, dout, 0, x, 0, 1, dw1, 0);
    cpu::linear_backward(dx2.data(), dw2.data(), dout.data(), x.data(), w.data(), N, I, O);
    expect_close(dx1, dx2);
    expect_close(dw1, dw2);
  }
}

TEST_CASE("attention: head packing and the batched GEMMs replay attention_forward / attention_backward") {
  const int shapes[][4] = {{2, 5, 3, 4}, {1, 1, 1, 1}, {1, 7, 2, 3}, {3, 4, 2, 5}, {2, 9, 1, 8}, {1, 6, 4, 2}};
  for (const auto& sh : shapes) {  // B*NH > 1, odd T and odd D among them
    const int B = sh[0], Tn = sh[1], NH = sh[2], D = sh[3];  // not a structured binding: CAPTURE is a lambda
    CAPTURE(B);
    CAPTURE(Tn);
    CAPTURE(NH);
    CAPTURE(D);
    const int C = NH * D;
    const V qkv = rnd(size_t(B) * Tn * 3 * C), dout = rnd(size_t(B) * Tn * C);
    V out1 = rnd(size_t(B) * Tn * C), out2 = out1, att1 = rnd(size_t(B) * NH * Tn * Tn), att2 = att1;
    attention_forward(out1, att1, qkv, B, Tn, C, NH);
    cpu::attention_forward(out2.data(), att2.data(), qkv.data(), B, Tn, C, NH);
    expect_close(out1, out2);
    expect_close(att1, att2);
    V d1 = rnd(qkv.size()), d2 = d1, s1(att2.size()), s2(att2.size());  // dqkv accumulates
    attention_backward(d1, s1, dout, qkv, att2, B, Tn, C, NH);
    cpu::attention_backward(d2.data(), s2.data(), dout.data(), qkv.data(), att2.data(), B, Tn, C, NH);
    expect_close(d1, d2);
  }
}

TEST_CASE("cached attention: a strided q and the per-head strided batch replay attention_cached_forward") {
  // n == len (prefill) and n == 1 (decode) among them; decode with head widths of whole vectors
  // (16, 64) and with a tail (20), keys by 4 and a remainder (every head read in one pass).
  const int shapes[][4] = {{3, 7, 2, 4},   {5, 5, 2, 3},   {1, 6, 3, 5},   {4, 4, 1, 2}, {1, 1, 2, 3},
                           {2, 9, 4, 1},   {1, 11, 3, 16}, {1, 10, 2, 20}, {1, 37, 4, 64}};
  for (const auto& sh : shapes) {
    const int n = sh[0], len = sh[1], NH = sh[2], D = sh[3];  // not a structured binding: CAPTURE is a lambda
    for (int packed = 0; packed < 2; ++packed) {  // q inside packed qkv rows (stride 3C), or (n, C)
      CAPTURE(n);
      CAPTURE(len);
      CAPTURE(NH);
      CAPTURE(D);
      CAPTURE(packed);
      const int C = NH * D, q_stride = packed ? 3 * C : C;
      const V q = rnd(size_t(n) * q_stride), kc = rnd(size_t(len) * C), vc = rnd(size_t(len) * C);
      V out1 = rnd(size_t(n) * C), out2 = out1, sc1 = rnd(size_t(NH) * n * len), sc2 = sc1;
      attention_cached_forward(out1, sc1, q, q_stride, kc, vc, n, len, C, NH);
      cpu::attention_cached_forward(out2.data(), sc2.data(), q.data(), q_stride, kc.data(), vc.data(), n, len, C,
                                    NH);
      expect_close(out1, out2);
      expect_close(sc1, sc2);
    }
  }
}

TEST_CASE("RoPE: rope_value over every element replays rope_forward / rope_backward, partial rotation") {
  const int shapes[][5] = {{2, 4, 3, 6, 2}, {1, 5, 2, 7, 2}, {2, 3, 3, 4, 0}, {1, 4, 3, 8, 3}, {3, 1, 2, 5, 1}};
  for (const auto& sh : shapes) {  // odd D: its last element is left untouched by both
    const int B = sh[0], Tn = sh[1], NHx = sh[2], D = sh[3], nrot = sh[4];  // not a structured binding: CAPTURE is a lambda
    CAPTURE(B);
    CAPTURE(Tn);
    CAPTURE(NHx);
    CAPTURE(D);
    CAPTURE(nrot);
    const size_t n = size_t(B) * Tn * NHx * D;
    const V x = rnd(n);
    V c(size_t(Tn) * (D / 2)), s(c.size());
    cpu::rope_tables(c.data(), s.data(), Tn, D, 10000.0);
    V y1 = rnd(n), y2 = y1;
    rope_run(y1, x, c, s, B, Tn, NHx, D, nrot, 1, false);
    cpu::rope_forward(y2.data(), x.data(), c.data(), s.data(), B, Tn, NHx, D, nrot);
    expect_close(y1, y2);
    V g1 = rnd(n), g2 = g1;  // backward accumulates the inverse rotation
    rope_run(g1, x, c, s, B, Tn, NHx, D, nrot, -1, true);
    cpu::rope_backward(g2.data(), x.data(), c.data(), s.data(), B, Tn, NHx, D, nrot);
    expect_close(g1, g2);
  }
}
