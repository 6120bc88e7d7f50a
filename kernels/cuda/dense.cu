// CUDA kernels of the dense ops: embedding, linear (cuBLAS), add/scale, RMSNorm, RoPE, attention
// (dense_attention.cuh), SwiGLU, cross-entropy and the inference helpers. Semantics and arithmetic
// order follow kernels/cpu (dense.cpp, attention.cpp, inference.cpp); every backward adds into its
// gradient outputs and skips a null one. Reductions run in T in a fixed order (deterministic).
#include <cmath>
#include <type_traits>

#include "kernels/cuda/dense_attention.cuh"
#include "kernels/cuda/dense_gemm.cuh"

namespace anyk::cuda::dense {
namespace {

// ---- embedding ----
template <class T> __global__ void embedding_forward_k(T* out, const int32_t* ids, const T* wte, int N, int C) {
  ANYK_GRID_STRIDE(i, int64_t(N) * C) out[i] = wte[int64_t(ids[i / C]) * C + i % C];
}
template <class T> void embedding_forward(const Ctx& ctx, T* out, const int32_t* ids, const T* wte, int N, int C) {
  if (int64_t(N) * C == 0) return;
  embedding_forward_k<T><<<grid_for(int64_t(N) * C), kThreads, 0, stream_of(ctx)>>>(out, ids, wte, N, C);
  check_launch("embedding_forward");
}
template <class T> void embedding_backward(const Ctx& ctx, T* dwte, const T* dout, const int32_t* ids, int N, int C) {
  if (!dwte || int64_t(N) * C == 0) return;
  scatter_add_rows_sorted<T>(stream_of(ctx), dwte, dout, ids, nullptr, nullptr, N, C);
}

// ---- linear: row-major GEMMs (dense_index.cuh); bf16 operands under ctx.gemm_bf16 (T = float) ----
template <class T> void linear_forward(const Ctx& ctx, T* out, const T* x, const T* w, int N, int I, int O) {
  const RowGemm g = linear_gemms(N, I, O).fwd;
  if constexpr (std::is_same_v<T, float>) {
    if (ctx.gemm_bf16) {
      const float* src[3] = {x, w, nullptr};
      const int64_t n[3] = {int64_t(N) * I, int64_t(O) * I, 0};
      const Bf16Operands b = bf16_operands(stream_of(ctx), src, n);
      return gemm_rm<bf16, float>(ctx, g, 1.f, b.p[0], 0, b.p[1], 0, 0.f, out, 0);
    }
  }
  gemm_rm<T, T>(ctx, g, T(1), x, 0, w, 0, T(0), out, 0);
}
template <class T>
void linear_backward(const Ctx& ctx, T* dx, T* dw, const T* dout, const T* x, const T* w, int N, int I, int O) {
  if (!dx && !dw) return;
  const RowGemm gx = linear_gemms(N, I, O).dx, gw = linear_gemms(N, I, O).dw;
  if constexpr (std::is_same_v<T, float>) {
    if (ctx.gemm_bf16) {
      const float* src[3] = {dout, dx ? w : nullptr, dw ? x : nullptr};
      const int64_t n[3] = {int64_t(N) * O, int64_t(O) * I, int64_t(N) * I};
      const Bf16Operands b = bf16_operands(stream_of(ctx), src, n);
      if (dx) gemm_rm<bf16, float>(ctx, gx, 1.f, b.p[0], 0, b.p[1], 0, 1.f, dx, 0);
      if (dw) gemm_rm<bf16, float>(ctx, gw, 1.f, b.p[0], 0, b.p[2], 0, 1.f, dw, 0);
      return;
    }
  }
  if (dx) gemm_rm<T, T>(ctx, gx, T(1), dout, 0, w, 0, T(1), dx, 0);
  if (dw) gemm_rm<T, T>(ctx, gw, T(1), dout, 0, x, 0, T(1), dw, 0);
}
// Inference's few-rows matmul: the same GEMM (cuBLAS picks a GEMV-like kernel for small M).
template <class T> void linear_rows_forward(const Ctx& ctx, T* out, const T* x, const T* w, int M, int I, int O) {
  linear_forward<T>(ctx, out, x, w, M, I, O);
}

// ---- add / scale ----
template <class T> __global__ void add_forward_k(T* out, const T* a, const T* b, int64_t n) {
  ANYK_GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}
template <class T> __global__ void add_backward_k(T* da, T* db, const T* dout, int64_t n) {
  ANYK_GRID_STRIDE(i, n) {
    if (da) da[i] += dout[i];
    if (db) db[i] += dout[i];
  }
}
template <class T> __global__ void scale_forward_k(T* out, const T* a, T s, int64_t n) {
  ANYK_GRID_STRIDE(i, n) out[i] = s * a[i];
}
template <class T> __global__ void scale_backward_k(T* da, const T* dout, T s, int64_t n) {
  ANYK_GRID_STRIDE(i, n) da[i] += s * dout[i];
}
template <class T> void add_forward(const Ctx& ctx, T* out, const T* a, const T* b, int64_t n) {
  if (n <= 0) return;
  add_forward_k<T><<<grid_for(n), kThreads, 0, stream_of(ctx)>>>(out, a, b, n);
  check_launch("add_forward");
}
template <class T> void add_backward(const Ctx& ctx, T* da, T* db, const T* dout, int64_t n) {
  if (n <= 0 || (!da && !db)) return;
  add_backward_k<T><<<grid_for(n), kThreads, 0, stream_of(ctx)>>>(da, db, dout, n);
  check_launch("add_backward");
}
template <class T> void scale_forward(const Ctx& ctx, T* out, const T* a, T s, int64_t n) {
  if (n <= 0) return;
  scale_forward_k<T><<<grid_for(n), kThreads, 0, stream_of(ctx)>>>(out, a, s, n);
  check_launch("scale_forward");
}
template <class T> void scale_backward(const Ctx& ctx, T* da, const T* dout, T s, int64_t n) {
  if (n <= 0 || !da) return;
  scale_backward_k<T><<<grid_for(n), kThreads, 0, stream_of(ctx)>>>(da, dout, s, n);
  check_launch("scale_backward");
}

// ---- RMSNorm: one block per row; dw a two-pass column reduction over fixed row chunks ----
template <class T>
__global__ void rmsnorm_forward_k(T* out, T* rstd, const T* x, const T* w, int C, double eps) {
  const T* xr = x + int64_t(blockIdx.x) * C;
  T* yr = out + int64_t(blockIdx.x) * C;
  T ss = 0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) ss += xr[c] * xr[c];
  ss = block_reduce<T, false>(ss);
  const T r = T(1) / dsqrt(ss / T(C) + T(eps));
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int c = threadIdx.x; c < C; c += blockDim.x) yr[c] = xr[c] * r * w[c];
}
template <class T>
__global__ void rmsnorm_backward_dx_k(T* dx, const T* dout, const T* x, const T* w, const T* rstd, int C) {
  const int64_t off = int64_t(blockIdx.x) * C;
  const T *xr = x + off, *dy = dout + off;
  T* dxr = dx + off;
  const T r = rstd[blockIdx.x];
  T dot = 0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dot += dy[c] * w[c] * xr[c] * r;
  dot = block_reduce<T, false>(dot) / T(C);
  for (int c = threadIdx.x; c < C; c += blockDim.x) dxr[c] += r * (dy[c] * w[c] - xr[c] * r * dot);
}
// part (chunks, C): column sums of dout * x * rstd over rows [chunk*rows, (chunk+1)*rows).
template <class T>
__global__ void rmsnorm_dw_part_k(T* part, const T* dout, const T* x, const T* rstd, int N, int C, int rows) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int n0 = blockIdx.y * rows, n1 = n0 + rows < N ? n0 + rows : N;
  T s = 0;
  for (int n = n0; n < n1; ++n) s += dout[int64_t(n) * C + c] * x[int64_t(n) * C + c] * rstd[n];
  part[int64_t(blockIdx.y) * C + c] = s;
}
template <class T> __global__ void rmsnorm_dw_sum_k(T* dw, const T* part, int chunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  T s = 0;
  for (int k = 0; k < chunks; ++k) s += part[int64_t(k) * C + c];
  dw[c] += s;
}
template <class T>
void rmsnorm_forward(const Ctx& ctx, T* out, T* rstd, const T* x, const T* w, int N, int C, double eps) {
  if (N <= 0 || C <= 0) return;
  rmsnorm_forward_k<T><<<N, kThreads, 0, stream_of(ctx)>>>(out, rstd, x, w, C, eps);
  check_launch("rmsnorm_forward");
}
template <class T>
void rmsnorm_backward(const Ctx& ctx, T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int N,
                      int C) {
  if (N <= 0 || C <= 0) return;
  cudaStream_t s = stream_of(ctx);
  if (dx) {
    rmsnorm_backward_dx_k<T><<<N, kThreads, 0, s>>>(dx, dout, x, w, rstd, C);
    check_launch("rmsnorm_backward_dx");
  }
  if (!dw) return;
  const int rows = N > 64 * 4096 ? (N + 4095) / 4096 : 64;  // at most 4096 chunks of at least 64 rows
  const int chunks = (N + rows - 1) / rows;
  T* part = static_cast<T*>(workspace(size_t(chunks) * C * sizeof(T)));
  const unsigned cb = blocks_for(C, kThreads);
  rmsnorm_dw_part_k<T><<<dim3(cb, chunks), kThreads, 0, s>>>(part, dout, x, rstd, N, C, rows);
  check_launch("rmsnorm_dw_part");
  rmsnorm_dw_sum_k<T><<<cb, kThreads, 0, s>>>(dw, part, chunks, C);
  check_launch("rmsnorm_dw_sum");
}

// ---- RoPE (dense_index.cuh: rope_value) ----
template <class T> __global__ void rope_tables_k(T* cos_t, T* sin_t, int Tn, int D, double theta) {
  const int half = D / 2;
  ANYK_GRID_STRIDE(e, int64_t(Tn) * half) {
    const int t = int(e / half), i = int(e % half);
    const double ang = t * pow(theta, -2.0 * i / D);  // in double, as the CPU
    cos_t[e] = T(cos(ang));
    sin_t[e] = T(sin(ang));
  }
}
template <class T>
__global__ void rope_k(T* out, const T* x, const T* cos_t, const T* sin_t, int64_t rows, int Tn, int64_t row, int D,
                       int nrot, T sign, bool accumulate) {
  ANYK_GRID_STRIDE(e, rows * row) {
    const int64_t bt = e / row, j = e % row;
    const int64_t t = bt % Tn;
    T y;
    if (!rope_value(y, x + bt * row, cos_t + t * (D / 2), sin_t + t * (D / 2), j, D, nrot, sign)) continue;
    out[e] = accumulate ? out[e] + y : y;
  }
}
template <class T> void rope_tables(const Ctx& ctx, T* cos_t, T* sin_t, int Tn, int D, double theta) {
  const int64_t n = int64_t(Tn) * (D / 2);
  if (n <= 0) return;
  rope_tables_k<T><<<grid_for(n), kThreads, 0, stream_of(ctx)>>>(cos_t, sin_t, Tn, D, theta);
  check_launch("rope_tables");
}
template <class T>
void rope_run(const Ctx& ctx, T* out, const T* x, const T* cos_t, const T* sin_t, int B, int Tn, int NHx, int D,
              int nrot, T sign, bool accumulate) {
  const int64_t rows = int64_t(B) * Tn, row = int64_t(NHx) * D;
  if (rows * row <= 0) return;
  rope_k<T><<<grid_for(rows * row), kThreads, 0, stream_of(ctx)>>>(out, x, cos_t, sin_t, rows, Tn, row, D, nrot,
                                                                     sign, accumulate);
  check_launch(accumulate ? "rope_backward" : "rope_forward");
}
template <class T>
void rope_forward(const Ctx& ctx, T* out, const T* x, const T* cos_t, const T* sin_t, int B, int Tn, int NHx, int D,
                  int nrot) {
  rope_run<T>(ctx, out, x, cos_t, sin_t, B, Tn, NHx, D, nrot, T(1), false);
}
template <class T>
void rope_backward(const Ctx& ctx, T* dx, const T* dout, const T* cos_t, const T* sin_t, int B, int Tn, int NHx,
                   int D, int nrot) {
  if (dx) rope_run<T>(ctx, dx, dout, cos_t, sin_t, B, Tn, NHx, D, nrot, T(-1), true);  // the inverse rotation
}

// ---- SwiGLU: h (M,2H) = [gate | up] ----
template <class T> __global__ void swiglu_forward_k(T* out, const T* h, int64_t M, int H) {
  ANYK_GRID_STRIDE(e, M * H) {
    const int64_t m = e / H, j = e % H;
    const T g = h[m * 2 * H + j], u = h[m * 2 * H + H + j];
    out[e] = g / (T(1) + dexp(-g)) * u;
  }
}
template <class T> __global__ void swiglu_backward_k(T* dh, const T* dout, const T* h, int64_t M, int H) {
  ANYK_GRID_STRIDE(e, M * H) {
    const int64_t m = e / H, j = e % H;
    const T g = h[m * 2 * H + j], u = h[m * 2 * H + H + j], dy = dout[e];
    const T sig = T(1) / (T(1) + dexp(-g));
    dh[m * 2 * H + j] += dy * u * sig * (T(1) + g * (T(1) - sig));
    dh[m * 2 * H + H + j] += dy * (g * sig);
  }
}
template <class T> void swiglu_forward(const Ctx& ctx, T* out, const T* h, int M, int H) {
  if (int64_t(M) * H <= 0) return;
  swiglu_forward_k<T><<<grid_for(int64_t(M) * H), kThreads, 0, stream_of(ctx)>>>(out, h, M, H);
  check_launch("swiglu_forward");
}
template <class T> void swiglu_backward(const Ctx& ctx, T* dh, const T* dout, const T* h, int M, int H) {
  if (!dh || int64_t(M) * H <= 0) return;
  swiglu_backward_k<T><<<grid_for(int64_t(M) * H), kThreads, 0, stream_of(ctx)>>>(dh, dout, h, M, H);
  check_launch("swiglu_backward");
}

// ---- cross-entropy: one block per row, max-subtracted log-sum-exp in T ----
template <class T> struct RowLse {
  T mx, s;  // row max and sum of exp(z - mx)
};
template <class T> __device__ RowLse<T> row_lse(const T* z, int V) {
  T mx = z[0];
  for (int v = threadIdx.x; v < V; v += blockDim.x) mx = z[v] > mx ? z[v] : mx;
  mx = block_reduce<T, true>(mx);
  T s = 0;
  for (int v = threadIdx.x; v < V; v += blockDim.x) s += dexp(z[v] - mx);
  return RowLse<T>{mx, block_reduce<T, false>(s)};
}
template <class T> __global__ void cross_entropy_forward_k(T* losses, const T* logits, const int32_t* targets, int V) {
  const T* z = logits + int64_t(blockIdx.x) * V;
  const RowLse<T> r = row_lse(z, V);
  if (threadIdx.x == 0) losses[blockIdx.x] = r.mx + dlog(r.s) - z[targets[blockIdx.x]];
}
template <class T>
__global__ void cross_entropy_backward_k(T* dlogits, const T* dlosses, const T* logits, const int32_t* targets, int V) {
  const int64_t off = int64_t(blockIdx.x) * V;
  const T* z = logits + off;
  T* dz = dlogits + off;
  const RowLse<T> r = row_lse(z, V);
  const T g = dlosses[blockIdx.x], inv = T(1) / r.s;
  const int tgt = targets[blockIdx.x];
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    dz[v] += g * dexp(z[v] - r.mx) * inv;
    if (v == tgt) dz[v] -= g;  // after the softmax term, as the CPU
  }
}
template <class T>
void cross_entropy_forward(const Ctx& ctx, T* losses, const T* logits, const int32_t* targets, int N, int V) {
  if (N <= 0 || V <= 0) return;
  cross_entropy_forward_k<T><<<N, kThreads, 0, stream_of(ctx)>>>(losses, logits, targets, V);
  check_launch("cross_entropy_forward");
}
template <class T>
void cross_entropy_backward(const Ctx& ctx, T* dlogits, const T* dlosses, const T* logits, const int32_t* targets,
                            int N, int V) {
  if (!dlogits || N <= 0 || V <= 0) return;
  cross_entropy_backward_k<T><<<N, kThreads, 0, stream_of(ctx)>>>(dlogits, dlosses, logits, targets, V);
  check_launch("cross_entropy_backward");
}

}  // namespace
}  // namespace anyk::cuda::dense

namespace anyk::cuda {

template <class T> void fill_dense(Kernels<T>& k) {
  namespace d = dense;
  k.embedding_forward = d::embedding_forward<T>;
  k.embedding_backward = d::embedding_backward<T>;
  k.linear_forward = d::linear_forward<T>;
  k.linear_backward = d::linear_backward<T>;
  k.add_forward = d::add_forward<T>;
  k.add_backward = d::add_backward<T>;
  k.scale_forward = d::scale_forward<T>;
  k.scale_backward = d::scale_backward<T>;
  k.rmsnorm_forward = d::rmsnorm_forward<T>;
  k.rmsnorm_backward = d::rmsnorm_backward<T>;
  k.rope_tables = d::rope_tables<T>;
  k.rope_forward = d::rope_forward<T>;
  k.rope_backward = d::rope_backward<T>;
  k.attention_forward = d::attention_forward<T>;
  k.attention_backward = d::attention_backward<T>;
  k.swiglu_forward = d::swiglu_forward<T>;
  k.swiglu_backward = d::swiglu_backward<T>;
  k.cross_entropy_forward = d::cross_entropy_forward<T>;
  k.cross_entropy_backward = d::cross_entropy_backward<T>;
  k.attention_cached_forward = d::attention_cached_forward<T>;
  k.linear_rows_forward = d::linear_rows_forward<T>;
}

template void fill_dense<float>(Kernels<float>&);
template void fill_dense<double>(Kernels<double>&);

}  // namespace anyk::cuda
