// CPU causal multi-head self-attention over packed qkv, one (batch, head) pair per OpenMP task;
// each pair's matmuls run through Eigen maps with a row stride (no copies of q, k, v).
// The backward adds into dqkv.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernels/cpu/eigen_maps.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vexp.h"

namespace anyk::cpu {

namespace {

// The causal part (j <= i) of a = (Q Kᵀ) * scale, row-major Tn x Tn; the rest of a is left as it
// is (the softmax masks it). The same bits as Eigen's `A = (Q * K.transpose()) * scale`, which
// evaluates the product into a fresh column-major temporary (malloc, setZero, GEMM) and then
// copies it, scaled, into A in A's row order (a strided read per element): here the same product
// runs into a reused column-major buffer of the thread (the same Eigen call on a column-major
// destination, so the same kernel path and sums), and only the causal half is copied, scaled, in
// blocks of 16 columns, each element once with the same single multiply.
template <class T, class M>
void scaled_scores(T* a, const M& Q, const M& K, T scale, int Tn) {
  static thread_local Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> S;
  S.resize(Tn, Tn);
  S.noalias() = Q * K.transpose();
  const T* s = S.data();
  constexpr int kB = 16;
  for (int j0 = 0; j0 < Tn; j0 += kB) {
    const int j1 = std::min(Tn, j0 + kB);
    for (int i = j0; i < Tn; ++i) {
      T* ar = a + static_cast<int64_t>(i) * Tn;
      const int je = std::min(j1, i + 1);
      for (int j = j0; j < je; ++j) ar[j] = s[static_cast<int64_t>(j) * Tn + i] * scale;
    }
  }
}

}  // namespace

template <class T>
void attention_forward(T* out, T* att, const T* qkv, int B, int Tn, int C, int NH) {
  const int D = C / NH;
  const T scale = T(1) / std::sqrt(T(D));
  eigen_serial();  // the per-head products' blocking must not follow the thread count
#pragma omp parallel for collapse(2) schedule(dynamic) if (int64_t(B) * Tn * Tn * C >= kGemmGrainFlops)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      const T* base = qkv + static_cast<int64_t>(b) * Tn * 3 * C + static_cast<int64_t>(h) * D;
      CSMatMap<T> Q(base, Tn, D, Eigen::OuterStride<>(3 * C));
      CSMatMap<T> K(base + C, Tn, D, Eigen::OuterStride<>(3 * C));
      CSMatMap<T> V(base + 2 * C, Tn, D, Eigen::OuterStride<>(3 * C));
      MatMap<T> A(att + (static_cast<int64_t>(b) * NH + h) * Tn * Tn, Tn, Tn);
      scaled_scores(A.data(), Q, K, scale, Tn);
      for (int i = 0; i < Tn; ++i) {
        T* a = A.data() + static_cast<int64_t>(i) * Tn;
        T mx = a[0];
        for (int j = 1; j <= i; ++j) mx = a[j] > mx ? a[j] : mx;
        T s = 0;
        if constexpr (std::is_same_v<T, float>) {
          // exps 8 at a time (vexp8 is bit-identical to std::exp), then the sum in index order.
          for (int j = 0; j <= i; ++j) a[j] -= mx;
          vexp_inplace(a, i + 1);
          for (int j = 0; j <= i; ++j) s += a[j];
        } else {
          for (int j = 0; j <= i; ++j) {
            a[j] = std::exp(a[j] - mx);
            s += a[j];
          }
        }
        T inv = T(1) / s;
        for (int j = 0; j <= i; ++j) a[j] *= inv;
        for (int j = i + 1; j < Tn; ++j) a[j] = 0;  // causal mask
      }
      SMatMap<T> O(out + static_cast<int64_t>(b) * Tn * C + static_cast<int64_t>(h) * D, Tn, D,
                   Eigen::OuterStride<>(C));
      O.noalias() = A * V;
    }
  }
}

template <class T>
void attention_backward(T* dqkv, T* scratch, const T* dout, const T* qkv, const T* att, int B,
                        int Tn, int C, int NH) {
  const int D = C / NH;
  const T scale = T(1) / std::sqrt(T(D));
  eigen_serial();  // the per-head products' blocking must not follow the thread count
#pragma omp parallel for collapse(2) schedule(dynamic) if (int64_t(B) * Tn * Tn * C >= kGemmGrainFlops)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      int64_t off = static_cast<int64_t>(b) * Tn * 3 * C + static_cast<int64_t>(h) * D;
      CSMatMap<T> Q(qkv + off, Tn, D, Eigen::OuterStride<>(3 * C));
      CSMatMap<T> K(qkv + off + C, Tn, D, Eigen::OuterStride<>(3 * C));
      CSMatMap<T> V(qkv + off + 2 * C, Tn, D, Eigen::OuterStride<>(3 * C));
      SMatMap<T> dQ(dqkv + off, Tn, D, Eigen::OuterStride<>(3 * C));
      SMatMap<T> dK(dqkv + off + C, Tn, D, Eigen::OuterStride<>(3 * C));
      SMatMap<T> dV(dqkv + off + 2 * C, Tn, D, Eigen::OuterStride<>(3 * C));
      CSMatMap<T> dO(dout + static_cast<int64_t>(b) * Tn * C + static_cast<int64_t>(h) * D, Tn, D,
                     Eigen::OuterStride<>(C));
      int64_t aoff = (static_cast<int64_t>(b) * NH + h) * Tn * Tn;
      CMatMap<T> A(att + aoff, Tn, Tn);
      MatMap<T> dS(scratch + aoff, Tn, Tn);
      dV.noalias() += A.transpose() * dO;
      dS.noalias() = dO * V.transpose();  // d(att)
      // softmax backward per row: dS = A * (dA - sum_j dA*A); masked entries have A = 0.
      for (int i = 0; i < Tn; ++i) {
        T* ds = dS.data() + static_cast<int64_t>(i) * Tn;
        const T* a = A.data() + static_cast<int64_t>(i) * Tn;
        T dot = 0;
        for (int j = 0; j <= i; ++j) dot += ds[j] * a[j];
        for (int j = 0; j <= i; ++j) ds[j] = a[j] * (ds[j] - dot) * scale;
        for (int j = i + 1; j < Tn; ++j) ds[j] = 0;
      }
      dQ.noalias() += dS * K;
      dK.noalias() += dS.transpose() * Q;
    }
  }
}

ANYK_INSTANTIATE(attention_forward)
ANYK_INSTANTIATE(attention_backward)

}  // namespace anyk::cpu
