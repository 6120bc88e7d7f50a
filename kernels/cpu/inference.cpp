// CPU kernels used only by inference (model/generate): the attention of new queries over a
// sequence's KV cache, and the few-rows matmul of decode steps.
// Attention: one head per OpenMP task when the work is large enough; Eigen maps with row strides,
// no copies. The scaling, the causal softmax and the product order are those of
// attention_forward, so a cached step reproduces the full forward's row.
// Few-rows matmul: each weight row is read once and dotted with every input row (a decode step
// has one row per sequence, or a few per expert), which a GEMM would first copy into packed
// panels: for a handful of rows that copy costs more than the arithmetic.
#include <cmath>

#include "kernels/cpu/eigen_maps.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/parallel.h"

namespace anyk::cpu {

template <class T>
void attention_cached_forward(T* out, T* scores, const T* q, int q_stride, const T* kc, const T* vc, int n,
                              int len, int C, int NH) {
  const int D = C / NH;
  const int p0 = len - n;  // position of the first new query
  const T scale = T(1) / std::sqrt(T(D));
  const bool par = int64_t(n) * len * C >= kGemmGrainFlops;
  eigen_serial();
#pragma omp parallel for schedule(static) if (par)
  for (int h = 0; h < NH; ++h) {
    CSMatMap<T> Q(q + int64_t(h) * D, n, D, Eigen::OuterStride<>(q_stride));
    CSMatMap<T> K(kc + int64_t(h) * D, len, D, Eigen::OuterStride<>(C));
    CSMatMap<T> V(vc + int64_t(h) * D, len, D, Eigen::OuterStride<>(C));
    MatMap<T> A(scores + int64_t(h) * n * len, n, len);
    A.noalias() = (Q * K.transpose()) * scale;
    for (int i = 0; i < n; ++i) {
      T* a = A.data() + int64_t(i) * len;
      const int last = p0 + i;  // keys 0..last are visible
      T mx = a[0];
      for (int j = 1; j <= last; ++j) mx = a[j] > mx ? a[j] : mx;
      T s = 0;
      for (int j = 0; j <= last; ++j) {
        a[j] = std::exp(a[j] - mx);
        s += a[j];
      }
      T inv = T(1) / s;
      for (int j = 0; j <= last; ++j) a[j] *= inv;
      for (int j = last + 1; j < len; ++j) a[j] = 0;  // causal mask
    }
    SMatMap<T> O(out + int64_t(h) * D, n, D, Eigen::OuterStride<>(C));
    O.noalias() = A * V;
  }
}

template <class T> void linear_rows_forward(T* out, const T* x, const T* w, int M, int I, int O) {
  const bool par = int64_t(O) * I * M >= kGemmGrainFlops;
#pragma omp parallel for schedule(static) if (par)
  for (int o = 0; o < O; ++o) {
    const T* wr = w + int64_t(o) * I;
    int m = 0;
    for (; m + 4 <= M; m += 4) {
      const T* x0 = x + int64_t(m) * I;
      const T *x1 = x0 + I, *x2 = x1 + I, *x3 = x2 + I;
      T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int i = 0; i < I; ++i) {
        const T v = wr[i];
        s0 += v * x0[i];
        s1 += v * x1[i];
        s2 += v * x2[i];
        s3 += v * x3[i];
      }
      out[int64_t(m) * O + o] = s0;
      out[int64_t(m + 1) * O + o] = s1;
      out[int64_t(m + 2) * O + o] = s2;
      out[int64_t(m + 3) * O + o] = s3;
    }
    for (; m < M; ++m) {
      const T* x0 = x + int64_t(m) * I;
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int i = 0; i < I; ++i) s += wr[i] * x0[i];
      out[int64_t(m) * O + o] = s;
    }
  }
}

ANYK_INSTANTIATE(attention_cached_forward)
ANYK_INSTANTIATE(linear_rows_forward)

}  // namespace anyk::cpu
