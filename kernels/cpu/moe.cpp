// CPU kernels of the MoE path: the router (softmax, top-K, renormalised weights), the row
// gather / weighted scatter-add pair that permutes tokens to experts and back, and the
// per-expert grouped matmul. Backward kernels add into their gradient outputs.
#include <cmath>

#include "kernels/cpu/eigen_maps.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cuda/router_row.cuh"  // host/device row code, plain C++ without nvcc

namespace anyk::cpu {

// Each router row is router_forward_row of kernels/cuda/router_row.cuh, the code the CUDA kernel
// runs one thread per row: one definition of the softmax, the top-K and the weights.
template <class T>
void router_forward(T* probs, T* lse, int* ids, T* weights, const T* logits, const int* kcount,
                    int N, int E, int K, bool renorm) {
#pragma omp parallel for schedule(static) if (int64_t(N) * E >= kRowGrain)
  for (int n = 0; n < N; ++n)
    cuda::row::router_forward_row(probs + static_cast<int64_t>(n) * E, lse + n, ids + static_cast<int64_t>(n) * K,
                                  weights + static_cast<int64_t>(n) * K, logits + static_cast<int64_t>(n) * E,
                                  kcount ? kcount[n] : K, E, K, renorm);
}

// Not router_backward_row: the same statements, but GCC contracts their multiply-adds into FMAs
// differently once inlined here (-march=native), which moved float gradients by an ulp (measured);
// this loop keeps the CPU's bits. tests/test_cuda_router_row.cpp compares the two.
template <class T>
void router_backward(T* dlogits, const T* dweights, const T* dprobs, const T* dlse, const T* probs,
                     const int* ids, int N, int E, int K, bool renorm) {
#pragma omp parallel for schedule(static) if (int64_t(N) * E >= kRowGrain)
  for (int n = 0; n < N; ++n) {
    const T* p = probs + static_cast<int64_t>(n) * E;
    const int* id = ids + static_cast<int64_t>(n) * K;
    const T* dw = dweights + static_cast<int64_t>(n) * K;
    const T* dpn = dprobs ? dprobs + static_cast<int64_t>(n) * E : nullptr;
    T* dz = dlogits + static_cast<int64_t>(n) * E;
    // Gradient reaching p[id_j] through the weights: with w_j = p_j / S (S = sum of chosen p),
    // g_j = dw_j / S - sum_i dw_i p_i / S^2; without renormalisation g_j = dw_j.
    T S = 0, dwp = 0;
    for (int j = 0; j < K; ++j)
      if (id[j] >= 0) {
        S += p[id[j]];
        dwp += dw[j] * p[id[j]];
      }
    auto g = [&](int j) { return renorm ? dw[j] / S - dwp / (S * S) : dw[j]; };
    // Softmax backward: dz_e = p_e (dp_e - sum_f dp_f p_f); dlse adds dlse * p_e.
    T dot = 0;
    if (dpn)
      for (int e = 0; e < E; ++e) dot += dpn[e] * p[e];
    for (int j = 0; j < K; ++j)
      if (id[j] >= 0) dot += g(j) * p[id[j]];
    T dl = dlse ? dlse[n] : T(0);
    for (int e = 0; e < E; ++e) dz[e] += p[e] * ((dpn ? dpn[e] : T(0)) - dot + dl);
    for (int j = 0; j < K; ++j)
      if (id[j] >= 0) dz[id[j]] += p[id[j]] * g(j);
  }
}

template <class T> void gather_rows_forward(T* out, const T* x, const int* rows, int M, int C) {
#pragma omp parallel for schedule(static) if (int64_t(M) * C >= kRowGrain)
  for (int m = 0; m < M; ++m) {
    const T* src = x + static_cast<int64_t>(rows[m]) * C;
    T* dst = out + static_cast<int64_t>(m) * C;
    for (int c = 0; c < C; ++c) dst[c] = src[c];
  }
}

template <class T> void gather_rows_backward(T* dx, const T* dout, const int* rows, int M, int C) {
  // Several rows m may come from one source row: parallelise over columns to avoid races.
#pragma omp parallel for schedule(static) if (int64_t(M) * C >= kRowGrain)
  for (int c0 = 0; c0 < C; c0 += 16) {
    int c1 = c0 + 16 < C ? c0 + 16 : C;
    for (int m = 0; m < M; ++m) {
      T* dst = dx + static_cast<int64_t>(rows[m]) * C;
      const T* src = dout + static_cast<int64_t>(m) * C;
      for (int c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

template <class T>
void scatter_add_rows_forward(T* out, const T* y, const T* w, const int* tok, const int* widx, int M,
                              int C) {
#pragma omp parallel for schedule(static) if (int64_t(M) * C >= kRowGrain)
  for (int c0 = 0; c0 < C; c0 += 16) {
    int c1 = c0 + 16 < C ? c0 + 16 : C;
    for (int m = 0; m < M; ++m) {
      T s = w ? w[widx[m]] : T(1);
      T* dst = out + static_cast<int64_t>(tok[m]) * C;
      const T* src = y + static_cast<int64_t>(m) * C;
      for (int c = c0; c < c1; ++c) dst[c] += s * src[c];
    }
  }
}

template <class T>
void scatter_add_rows_backward(T* dy, T* dw, const T* dout, const T* y, const T* w, const int* tok,
                               const int* widx, int M, int C) {
  // Each m owns dy[m] and dw[widx[m]] (assignment slots are unique), so m is parallel.
#pragma omp parallel for schedule(static) if (int64_t(M) * C >= kRowGrain)
  for (int m = 0; m < M; ++m) {
    const T* g = dout + static_cast<int64_t>(tok[m]) * C;
    const T* ym = y + static_cast<int64_t>(m) * C;
    if (dy) {
      T s = w ? w[widx[m]] : T(1);
      T* d = dy + static_cast<int64_t>(m) * C;
      for (int c = 0; c < C; ++c) d[c] += s * g[c];
    }
    if (dw) {
      T dot = 0;
      for (int c = 0; c < C; ++c) dot += g[c] * ym[c];
      dw[widx[m]] += dot;
    }
  }
}

template <class T>
void grouped_linear_forward(T* out, const T* x, const T* w, const int* offsets, int E, int I, int O) {
  for (int e = 0; e < E; ++e) {
    int r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;  // an expert with no tokens is simply skipped
    gemm_xwt(out + static_cast<int64_t>(r0) * O, x + static_cast<int64_t>(r0) * I,
             w + static_cast<int64_t>(e) * O * I, rows, I, O, false);  // row chunks: see parallel.h
  }
}

template <class T>
void grouped_linear_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const int* offsets,
                             int E, int I, int O) {
  for (int e = 0; e < E; ++e) {
    int r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    const T* dY = dout + static_cast<int64_t>(r0) * O;
    if (dx) gemm_dyw_acc(dx + static_cast<int64_t>(r0) * I, dY, w + static_cast<int64_t>(e) * O * I, rows, I, O);
    if (dw) gemm_dytx_acc(dw + static_cast<int64_t>(e) * O * I, dY, x + static_cast<int64_t>(r0) * I, rows, I, O);
  }
}

ANYK_INSTANTIATE(router_forward)
ANYK_INSTANTIATE(router_backward)
ANYK_INSTANTIATE(gather_rows_forward)
ANYK_INSTANTIATE(gather_rows_backward)
ANYK_INSTANTIATE(scatter_add_rows_forward)
ANYK_INSTANTIATE(scatter_add_rows_backward)
ANYK_INSTANTIATE(grouped_linear_forward)
ANYK_INSTANTIATE(grouped_linear_backward)

}  // namespace anyk::cpu
