// The three row-major products of a linear layer, cut into row chunks of the output (see
// parallel.h): results are bit-identical at any thread count and to one unchunked product.
#pragma once
#include "kernels/cpu/eigen_maps.h"
#include "kernels/cpu/gemm_shared_pack.h"
#include "kernels/cpu/parallel.h"

namespace anyk::cpu {

// y (N,O) = x (N,I) · w (O,I)^T, or += when accumulate.
template <class T> void gemm_xwt(T* y, const T* x, const T* w, int N, int I, int O, bool accumulate) {
  eigen_serial();
#ifdef ANYK_SHARED_PACK
  // The same products with W packed once (gemm_shared_pack.h); it declines where Eigen differs.
  if (shared_pack::run_chunked<T, Eigen::RowMajor, Eigen::ColMajor>(y, O, w, I, x, I, O, N, I, !accumulate,
                                                                   int64_t(I) * O, kGemmGrainFlops))
    return;
#endif
  CMatMap<T> W(w, O, I);
  for_row_chunks(N, int64_t(I) * O, kGemmGrainFlops, [&](int r0, int r1) {
    MatMap<T> Y(y + int64_t(r0) * O, r1 - r0, O);
    CMatMap<T> X(x + int64_t(r0) * I, r1 - r0, I);
    if (accumulate)
      Y.noalias() += X * W.transpose();
    else
      Y.noalias() = X * W.transpose();
  });
}

// dx (N,I) += dy (N,O) · w (O,I)
template <class T> void gemm_dyw_acc(T* dx, const T* dy, const T* w, int N, int I, int O) {
  eigen_serial();
#ifdef ANYK_SHARED_PACK
  if (shared_pack::run_chunked<T, Eigen::ColMajor, Eigen::ColMajor>(dx, I, w, I, dy, O, I, N, O, false,
                                                                   int64_t(I) * O, kGemmGrainFlops))
    return;
#endif
  CMatMap<T> W(w, O, I);
  for_row_chunks(N, int64_t(I) * O, kGemmGrainFlops, [&](int r0, int r1) {
    MatMap<T>(dx + int64_t(r0) * I, r1 - r0, I).noalias() += CMatMap<T>(dy + int64_t(r0) * O, r1 - r0, O) * W;
  });
}

// dw (O,I) += dy (N,O)^T · x (N,I): chunks of dw's rows, each summing over all N in one product.
// In Eigen's column-major view a chunk is dw^T's columns += X^T (I,N) · dY's columns (N, chunk):
// x is the operand shared by all chunks, packed once (gemm_shared_pack.h).
template <class T> void gemm_dytx_acc(T* dw, const T* dy, const T* x, int N, int I, int O) {
  eigen_serial();
#ifdef ANYK_SHARED_PACK
  if (shared_pack::run_chunked<T, Eigen::ColMajor, Eigen::RowMajor>(dw, I, x, I, dy, O, I, O, N, false,
                                                                   int64_t(N) * I, kGemmGrainFlops))
    return;
#endif
  CMatMap<T> X(x, N, I);
  for_row_chunks(O, int64_t(N) * I, kGemmGrainFlops, [&](int o0, int o1) {
    CSMatMap<T> dY(dy + o0, N, o1 - o0, Eigen::OuterStride<>(O));
    MatMap<T>(dw + int64_t(o0) * I, o1 - o0, I).noalias() += dY.transpose() * X;
  });
}

}  // namespace anyk::cpu
