// CPU attention of new queries over a sequence's KV cache (inference), one head per OpenMP task
// when the work is large enough; Eigen maps with row strides, no copies. The scaling, the causal
// softmax and the product order are those of attention_forward, so a cached step reproduces the
// full forward's row.
#include <cmath>

#include "kernels/cpu/eigen_maps.h"
#include "kernels/cpu/kernels.h"

namespace anyk::cpu {

template <class T>
void attention_cached_forward(T* out, T* scores, const T* q, int q_stride, const T* kc, const T* vc, int n,
                              int len, int C, int NH) {
  const int D = C / NH;
  const int p0 = len - n;  // position of the first new query
  const T scale = T(1) / std::sqrt(T(D));
  const bool par = int64_t(n) * len * C >= (int64_t(1) << 16);
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

ANYK_INSTANTIATE(attention_cached_forward)

}  // namespace anyk::cpu
