// CUDA causal attention: q, k, v (and dout) are first packed head-major ((B*NH, T, D), in the GEMM
// operand type: T, or bf16 under ctx.gemm_bf16), then batched GEMMs over the B*NH heads and a
// fused causal softmax over att (B, NH, T, T). Memory: att and scratch are O(B NH T^2) (the
// caller's), plus workspace() for the packed heads (and bf16 copies of att / d(att)).
// Arithmetic order as in kernels/cpu/attention.cpp: S = (Q K^T) scale, softmax with the row max
// subtracted, O = A V; backward dV += A^T dO, dS = A (dO V^T - rowdot) scale, dQ += dS K,
// dK += dS^T Q. Included by dense.cu.
#pragma once
#include <cmath>

#include "kernels/cuda/dense_gemm.cuh"

namespace anyk::cuda::dense {

// dst[p] (B*NH, T, D) = head p of src (B, T, row) whose heads start at column p*C (p < nparts).
template <class T, class G>
__global__ void pack_heads_k(G* d0, G* d1, G* d2, const T* src, int nparts, int B, int Tn, int NH, int D,
                             int64_t row) {
  const int64_t hd = int64_t(B) * NH * Tn * D;
  const int64_t C = int64_t(NH) * D;
  ANYK_GRID_STRIDE(i, hd * nparts) {
    const int p = int(i / hd);
    const int64_t e = i - p * hd;
    const BHTD x = split_head_major(e, NH, Tn, D);
    G* dst = p == 0 ? d0 : p == 1 ? d1 : d2;
    dst[e] = convert_to<G>(src[token_major(x.b, x.t, x.h, x.d, Tn, row, p * C, D)]);
  }
}

// out (B, T, C) = the head-major o (B*NH, T, D) (assign).
template <class T> __global__ void unpack_heads_k(T* out, const T* o, int B, int Tn, int NH, int D) {
  ANYK_GRID_STRIDE(i, int64_t(B) * Tn * NH * D) {
    const BHTD x = split_token_major(i, Tn, NH * D, D);
    out[i] = o[head_major(x.b, x.h, x.t, x.d, NH, Tn, D)];
  }
}

// dqkv (B, T, 3C) += [dq | dk | dv], each head-major (B*NH, T, D).
template <class T>
__global__ void unpack_add_qkv_k(T* dqkv, const T* dq, const T* dk, const T* dv, int B, int Tn, int NH, int D) {
  ANYK_GRID_STRIDE(i, int64_t(B) * Tn * 3 * NH * D) {
    const BHTD x = split_token_major(i, Tn, 3 * NH * D, D);  // x.h in [0, 3 NH): part * NH + head
    const int part = x.h / NH;
    const T* src = part == 0 ? dq : part == 1 ? dk : dv;
    dqkv[i] += src[head_major(x.b, x.h - part * NH, x.t, x.d, NH, Tn, D)];
  }
}

// In-place causal softmax over rows of length L, one warp per row; row r is query r % nrows of its
// matrix and sees keys 0..p0 + (r % nrows); the rest become 0. copy (optional): the result as G.
template <class T, class G>
__global__ void causal_softmax_k(T* a, G* copy, int64_t rows, int nrows, int L, int p0) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (r >= rows) return;  // whole warps leave together
  const int lane = threadIdx.x, last = p0 + int(r % nrows);
  T* ar = a + r * L;
  T mx = ar[0];
  for (int j = lane; j <= last; j += 32) mx = ar[j] > mx ? ar[j] : mx;
  mx = warp_max(mx);
  T s = 0;
  for (int j = lane; j <= last; j += 32) {
    const T e = dexp(ar[j] - mx);
    ar[j] = e;
    s += e;
  }
  const T inv = T(1) / warp_sum(s);
  for (int j = lane; j < L; j += 32) {
    const T v = j <= last ? ar[j] * inv : T(0);
    ar[j] = v;
    if (copy) copy[r * L + j] = convert_to<G>(v);
  }
}

// In place on ds = d(att) rows (length Tn): ds = a (ds - sum_j ds a) scale over the causal part,
// 0 beyond. copy (optional): the result as G.
template <class T, class G>
__global__ void causal_softmax_backward_k(T* ds, G* copy, const T* a, int64_t rows, int Tn, T scale) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (r >= rows) return;
  const int lane = threadIdx.x, last = int(r % Tn);
  T* dr = ds + r * Tn;
  const T* ar = a + r * Tn;
  T dot = 0;
  for (int j = lane; j <= last; j += 32) dot += dr[j] * ar[j];
  dot = warp_sum(dot);
  for (int j = lane; j < Tn; j += 32) {
    const T v = j <= last ? ar[j] * (dr[j] - dot) * scale : T(0);
    dr[j] = v;
    if (copy) copy[r * Tn + j] = convert_to<G>(v);
  }
}

constexpr int kRowsPerBlock = 8;  // warps per block of the softmax kernels
inline unsigned row_blocks(int64_t rows) { return unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

template <class T, class G>
void softmax_rows(const Ctx& ctx, T* a, G* copy, int64_t rows, int nrows, int L, int p0) {
  if (rows <= 0) return;
  causal_softmax_k<T, G><<<row_blocks(rows), dim3(32, kRowsPerBlock), 0, stream_of(ctx)>>>(a, copy, rows, nrows, L,
                                                                                           p0);
  check_launch("causal_softmax");
}

inline void check_heads(int C, int NH) {
  ANYK_CHECK(NH > 0 && C % NH == 0, "attention: C = " << C << " is not a multiple of NH = " << NH
                                                      << " hint: choose n_embd divisible by n_head");
}

// G: the GEMM operand type (T, or bf16 for T = float under gemm_bf16).
template <class T, class G>
void attention_forward_impl(const Ctx& ctx, T* out, T* att, const T* qkv, int B, int Tn, int C, int NH) {
  check_heads(C, NH);
  const int D = C / NH, BH = B * NH;
  const int64_t hd = int64_t(BH) * Tn * D, tt = int64_t(BH) * Tn * Tn;
  if (hd == 0) return;
  constexpr bool conv = !std::is_same_v<G, T>;
  cudaStream_t s = stream_of(ctx);
  Carve cv;
  const size_t oq = cv.add<G>(hd), ok = cv.add<G>(hd), ov = cv.add<G>(hd), oo = cv.add<T>(hd);
  const size_t oa = conv ? cv.add<G>(tt) : 0;
  void* ws = workspace(cv.bytes);
  G *qh = at<G>(ws, oq), *kh = at<G>(ws, ok), *vh = at<G>(ws, ov);
  T* oh = at<T>(ws, oo);
  G* ag = conv ? at<G>(ws, oa) : nullptr;
  pack_heads_k<T, G><<<grid_for(3 * hd), kThreads, 0, s>>>(qh, kh, vh, qkv, 3, B, Tn, NH, D, 3 * int64_t(C));
  check_launch("attention pack_heads");
  const T scale = T(1) / std::sqrt(T(D));
  const long long sq = (long long)Tn * D, sa = (long long)Tn * Tn;
  const AttentionGemms gm = attention_gemms(Tn, D);
  gemm_rm<G, T>(ctx, gm.qk, scale, qh, sq, kh, sq, T(0), att, sa, BH);
  softmax_rows<T, G>(ctx, att, ag, tt / Tn, Tn, Tn, 0);
  const G* a = conv ? ag : reinterpret_cast<const G*>(att);
  gemm_rm<G, T>(ctx, gm.av, T(1), a, sa, vh, sq, T(0), oh, sq, BH);
  unpack_heads_k<T><<<grid_for(hd), kThreads, 0, s>>>(out, oh, B, Tn, NH, D);
  check_launch("attention unpack_heads");
}

template <class T, class G>
void attention_backward_impl(const Ctx& ctx, T* dqkv, T* scratch, const T* dout, const T* qkv, const T* att, int B,
                             int Tn, int C, int NH) {
  check_heads(C, NH);
  const int D = C / NH, BH = B * NH;
  const int64_t hd = int64_t(BH) * Tn * D, tt = int64_t(BH) * Tn * Tn;
  if (!dqkv || hd == 0) return;
  constexpr bool conv = !std::is_same_v<G, T>;
  cudaStream_t s = stream_of(ctx);
  Carve cv;
  size_t og[4], ot[3];
  for (auto& o : og) o = cv.add<G>(hd);  // q, k, v, dout packed
  for (auto& o : ot) o = cv.add<T>(hd);  // dq, dk, dv head-major
  const size_t oa = conv ? cv.add<G>(tt) : 0, od = conv ? cv.add<G>(tt) : 0;
  void* ws = workspace(cv.bytes);
  G *qh = at<G>(ws, og[0]), *kh = at<G>(ws, og[1]), *vh = at<G>(ws, og[2]), *doh = at<G>(ws, og[3]);
  T *dqh = at<T>(ws, ot[0]), *dkh = at<T>(ws, ot[1]), *dvh = at<T>(ws, ot[2]);
  pack_heads_k<T, G><<<grid_for(3 * hd), kThreads, 0, s>>>(qh, kh, vh, qkv, 3, B, Tn, NH, D, 3 * int64_t(C));
  check_launch("attention pack_heads");
  pack_heads_k<T, G><<<grid_for(hd), kThreads, 0, s>>>(doh, nullptr, nullptr, dout, 1, B, Tn, NH, D, C);
  check_launch("attention pack_heads");
  const G* a = reinterpret_cast<const G*>(att);
  G* dsg = nullptr;
  if constexpr (conv) {
    to_bf16(s, at<G>(ws, oa), att, tt);
    a = at<G>(ws, oa);
    dsg = at<G>(ws, od);
  }
  const T scale = T(1) / std::sqrt(T(D));
  const long long sq = (long long)Tn * D, sa = (long long)Tn * Tn;
  const AttentionGemms gm = attention_gemms(Tn, D);
  gemm_rm<G, T>(ctx, gm.dv, T(1), a, sa, doh, sq, T(0), dvh, sq, BH);
  gemm_rm<G, T>(ctx, gm.da, T(1), doh, sq, vh, sq, T(0), scratch, sa, BH);
  causal_softmax_backward_k<T, G><<<row_blocks(tt / Tn), dim3(32, kRowsPerBlock), 0, s>>>(scratch, dsg, att, tt / Tn,
                                                                                         Tn, scale);
  check_launch("causal_softmax_backward");
  const G* ds = conv ? dsg : reinterpret_cast<const G*>(scratch);
  gemm_rm<G, T>(ctx, gm.dq, T(1), ds, sa, kh, sq, T(0), dqh, sq, BH);
  gemm_rm<G, T>(ctx, gm.dk, T(1), ds, sa, qh, sq, T(0), dkh, sq, BH);
  unpack_add_qkv_k<T><<<grid_for(3 * hd), kThreads, 0, s>>>(dqkv, dqh, dkh, dvh, B, Tn, NH, D);
  check_launch("attention unpack_add_qkv");
}

template <class T> void attention_forward(const Ctx& ctx, T* out, T* att, const T* qkv, int B, int Tn, int C, int NH) {
  if constexpr (std::is_same_v<T, float>)
    if (ctx.gemm_bf16) return attention_forward_impl<T, bf16>(ctx, out, att, qkv, B, Tn, C, NH);
  attention_forward_impl<T, T>(ctx, out, att, qkv, B, Tn, C, NH);
}

template <class T>
void attention_backward(const Ctx& ctx, T* dqkv, T* scratch, const T* dout, const T* qkv, const T* att, int B,
                        int Tn, int C, int NH) {
  if constexpr (std::is_same_v<T, float>)
    if (ctx.gemm_bf16) return attention_backward_impl<T, bf16>(ctx, dqkv, scratch, dout, qkv, att, B, Tn, C, NH);
  attention_backward_impl<T, T>(ctx, dqkv, scratch, dout, qkv, att, B, Tn, C, NH);
}

// Inference: per head h, scores_h (n, len) = Q_h K_h^T scale straight from the strided q, kc
// (heads D columns apart: a strided batch over NH), causal softmax with query i at position
// len - n + i, out_h = A_h V_h written into out's columns. GEMMs in T (no bf16 rounding).
template <class T>
void attention_cached_forward(const Ctx& ctx, T* out, T* scores, const T* q, int q_stride, const T* kc, const T* vc,
                              int n, int len, int C, int NH) {
  check_heads(C, NH);
  if (n <= 0 || len <= 0) return;
  const int D = C / NH;
  const T scale = T(1) / std::sqrt(T(D));
  const long long ss = (long long)n * len;
  const CachedGemms gm = cached_gemms(n, len, D, q_stride, C);
  gemm_rm<T, T>(ctx, gm.qk, scale, q, D, kc, D, T(0), scores, ss, NH);
  softmax_rows<T, T>(ctx, scores, nullptr, int64_t(NH) * n, n, len, len - n);
  gemm_rm<T, T>(ctx, gm.av, T(1), scores, ss, vc, D, T(0), out, D, NH);
}

}  // namespace anyk::cuda::dense
