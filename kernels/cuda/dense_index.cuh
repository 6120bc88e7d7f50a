// Index math of the CUDA dense kernels, host- and device-callable (ANYK_HD) so it can be checked
// on the CPU against the CPU kernels' loops. No CUDA headers: a host compiler can include it.
#pragma once
#include <cstdint>

#include "kernels/counter_rng.h"  // ANYK_HD

namespace anyk::cuda::dense {

// ---- row-major GEMMs through column-major cuBLAS ----
// Row-major C (M,N) = op(A) op(B) with row strides lda, ldb, ldc. A row-major matrix is the
// column-major view of its transpose, so cuBLAS computes C^T = op(B)^T op(A)^T: its first operand
// is B with op(B)'s flag, its second A with op(A)'s flag, and its (m, n) are (N, M).
struct RowGemm {
  bool ta, tb;  // op(A) = A^T when ta (A stored (K,M)), else A stored (M,K); same for B
  int M, N, K, lda, ldb, ldc;
};
struct ColGemm {
  bool t1, t2;                  // transa, transb of the cuBLAS call
  int m, n, k, ld1, ld2, ldc;   // first operand is the row-major B, second the row-major A
};
ANYK_HD inline ColGemm to_col_major(const RowGemm& g) {
  return ColGemm{g.tb, g.ta, g.N, g.M, g.K, g.ldb, g.lda, g.ldc};
}

// linear: out (N,O) = x (N,I) w (O,I)^T ; dx (N,I) += dout (N,O) w ; dw (O,I) += dout^T x
struct LinearGemms {
  RowGemm fwd, dx, dw;
};
inline LinearGemms linear_gemms(int N, int I, int O) {
  return LinearGemms{RowGemm{false, true, N, O, I, I, I, O}, RowGemm{false, false, N, I, O, O, I, I},
                     RowGemm{true, false, O, I, N, O, I, I}};
}
// Attention over head-major (T,D) matrices Q, K, V, dO and (T,T) A, dS (ld D and T):
// S = Q K^T, O = A V ; dV = A^T dO, dA = dO V^T, dQ = dS K, dK = dS^T Q.
struct AttentionGemms {
  RowGemm qk, av, dv, da, dq, dk;
};
inline AttentionGemms attention_gemms(int Tn, int D) {
  return AttentionGemms{RowGemm{false, true, Tn, Tn, D, D, D, Tn},  RowGemm{false, false, Tn, D, Tn, Tn, D, D},
                        RowGemm{true, false, Tn, D, Tn, Tn, D, D},  RowGemm{false, true, Tn, Tn, D, D, D, Tn},
                        RowGemm{false, false, Tn, D, Tn, Tn, D, D}, RowGemm{true, false, Tn, D, Tn, Tn, D, D}};
}
// Cached attention, one head: scores (n,len) = Q (n,D; ld q_stride) K^T (K (len,D; ld C)), and
// out (n,D; ld C) = A (n,len) V (len,D; ld C).
struct CachedGemms {
  RowGemm qk, av;
};
inline CachedGemms cached_gemms(int n, int len, int D, int q_stride, int C) {
  return CachedGemms{RowGemm{false, true, n, len, D, q_stride, C, len}, RowGemm{false, false, n, D, len, len, C, C}};
}

// ---- attention layouts ----
// Token-major: element (b, t, h, d) of a (B, T, row) buffer whose heads start at column col0
// (q at 0, k at C, v at 2C inside qkv with row = 3C; out/dout with row = C, col0 = 0).
ANYK_HD inline int64_t token_major(int b, int t, int h, int d, int Tn, int64_t row, int64_t col0, int D) {
  return (int64_t(b) * Tn + t) * row + col0 + int64_t(h) * D + d;
}
// Head-major: element (b, h, t, d) of a (B*NH, T, D) buffer (one contiguous (T,D) matrix per head).
ANYK_HD inline int64_t head_major(int b, int h, int t, int d, int NH, int Tn, int D) {
  return ((int64_t(b) * NH + h) * Tn + t) * D + d;
}
struct BHTD {
  int b, h, t, d;
};
// Inverse of head_major.
ANYK_HD inline BHTD split_head_major(int64_t i, int NH, int Tn, int D) {
  BHTD r;
  r.d = int(i % D);
  i /= D;
  r.t = int(i % Tn);
  i /= Tn;
  r.h = int(i % NH);
  r.b = int(i / NH);
  return r;
}
// Element i of a token-major (B, T, width) buffer whose columns hold heads of D (width a multiple
// of D): (b, t, h, d) with h counted across the whole row (q heads 0..NH-1, k heads NH..2NH-1...).
ANYK_HD inline BHTD split_token_major(int64_t i, int Tn, int width, int D) {
  BHTD r;
  int c = int(i % width);
  int64_t bt = i / width;
  r.b = int(bt / Tn);
  r.t = int(bt % Tn);
  r.h = c / D;
  r.d = c % D;
  return r;
}

// ---- RoPE ----
// Output element j of one (b, t) row of width NHx*D: rotated heads (j < nrot*D) pair i with
// i + D/2 (y1 = x1 c - x2 s, y2 = x1 s + x2 c, s = sign * sin); the rest is copied. Returns false
// for the last element of an odd D, which the CPU kernel leaves untouched.
template <class T>
ANYK_HD inline bool rope_value(T& y, const T* xr, const T* ct, const T* st, int64_t j, int D, int nrot, T sign) {
  if (j >= int64_t(nrot) * D) {
    y = xr[j];
    return true;
  }
  const int half = D / 2;
  const int64_t h = j / D;
  const int r = int(j - h * D);
  if (r >= 2 * half) return false;
  const int i = r < half ? r : r - half;
  const T x1 = xr[h * D + i], x2 = xr[h * D + i + half];
  const T c = ct[i], s = sign * st[i];
  y = r < half ? x1 * c - x2 * s : x1 * s + x2 * c;
  return true;
}

}  // namespace anyk::cuda::dense
