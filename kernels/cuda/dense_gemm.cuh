// cuBLAS GEMMs of the dense kernels (row-major through the column-major trick of dense_index.cuh),
// bf16 operand conversion, workspace carving and the block/warp reductions. Included by dense.cu.
#pragma once
#include <cuda_bf16.h>

#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dense_index.cuh"

namespace anyk::cuda::dense {

using bf16 = __nv_bfloat16;

// ---- launch configuration ----
constexpr int kThreads = 256;
// Blocks for a grid-stride loop over n items (capped; the loop covers the rest).
inline unsigned grid_for(int64_t n) {
  const unsigned b = blocks_for(n, kThreads);
  return b < (1u << 20) ? b : (1u << 20);
}
#define ANYK_GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// ---- math in the kernel's precision (no fast math: as accurate as the CPU's std:: calls) ----
__device__ inline float dexp(float x) { return expf(x); }
__device__ inline double dexp(double x) { return exp(x); }
__device__ inline float dlog(float x) { return logf(x); }
__device__ inline double dlog(double x) { return log(x); }
__device__ inline float dsqrt(float x) { return sqrtf(x); }
__device__ inline double dsqrt(double x) { return sqrt(x); }

template <class G, class T> __device__ inline G convert_to(T v) {
  if constexpr (std::is_same_v<G, bf16>) return __float2bfloat16_rn(float(v));
  else return G(v);
}

// ---- reductions (fixed shuffle order: deterministic for a given launch shape) ----
template <class T> __device__ inline T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class T> __device__ inline T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) {
    T u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  return v;
}
// Block-wide sum or max (blockDim.x a multiple of 32); every thread gets the result.
template <class T, bool kMax> __device__ inline T block_reduce(T v) {
  __shared__ T part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();  // part may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (kMax) return warp_max(lane < nwarps ? part[lane] : part[0]);
  return warp_sum(lane < nwarps ? part[lane] : T(0));
}

// ---- workspace: all scratch of one kernel call from a single workspace() buffer ----
struct Carve {
  size_t bytes = 0;
  template <class U> size_t add(int64_t n) {  // returns the offset; 256-byte aligned pieces
    const size_t at = bytes;
    bytes += (size_t(n) * sizeof(U) + 255) & ~size_t(255);
    return at;
  }
};
template <class U> inline U* at(void* base, size_t off) {
  return reinterpret_cast<U*>(static_cast<char*>(base) + off);
}

static __global__ void to_bf16_k(bf16* out, const float* x, int64_t n) {
  ANYK_GRID_STRIDE(i, n) out[i] = __float2bfloat16_rn(x[i]);
}
inline void to_bf16(cudaStream_t s, bf16* out, const float* x, int64_t n) {
  if (n <= 0) return;
  to_bf16_k<<<grid_for(n), kThreads, 0, s>>>(out, x, n);
  check_launch("dense to_bf16");
}
// Up to three float operands rounded to bf16 in one workspace() call; a null source gives null.
struct Bf16Operands {
  const bf16* p[3] = {nullptr, nullptr, nullptr};
};
inline Bf16Operands bf16_operands(cudaStream_t s, const float* const src[3], const int64_t n[3]) {
  Carve cv;
  size_t off[3];
  for (int i = 0; i < 3; ++i) off[i] = src[i] ? cv.add<bf16>(n[i]) : 0;
  void* ws = cv.bytes ? workspace(cv.bytes) : nullptr;
  Bf16Operands r;
  for (int i = 0; i < 3; ++i) {
    if (!src[i]) continue;
    bf16* d = at<bf16>(ws, off[i]);
    to_bf16(s, d, src[i], n[i]);
    r.p[i] = d;
  }
  return r;
}

// ---- cuBLAS ----
// The shared handle bound to ctx's stream: blas_on (common.cuh).
inline cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

// Column-major (strided-batched when batch > 1) C = alpha op(X1) op(X2) + beta C; one overload per
// (operand, output) type pair. Strides are in elements.
inline void gemm_cm(cublasHandle_t h, const ColGemm& g, float alpha, const float* x1, long long s1,
                    const float* x2, long long s2, float beta, float* c, long long sc, int batch) {
  if (batch == 1)
    ANYK_CUBLAS_CHECK(cublasSgemm(h, op(g.t1), op(g.t2), g.m, g.n, g.k, &alpha, x1, g.ld1, x2, g.ld2, &beta, c, g.ldc));
  else
    ANYK_CUBLAS_CHECK(cublasSgemmStridedBatched(h, op(g.t1), op(g.t2), g.m, g.n, g.k, &alpha, x1, g.ld1, s1, x2,
                                                g.ld2, s2, &beta, c, g.ldc, sc, batch));
}
inline void gemm_cm(cublasHandle_t h, const ColGemm& g, double alpha, const double* x1, long long s1,
                    const double* x2, long long s2, double beta, double* c, long long sc, int batch) {
  if (batch == 1)
    ANYK_CUBLAS_CHECK(cublasDgemm(h, op(g.t1), op(g.t2), g.m, g.n, g.k, &alpha, x1, g.ld1, x2, g.ld2, &beta, c, g.ldc));
  else
    ANYK_CUBLAS_CHECK(cublasDgemmStridedBatched(h, op(g.t1), op(g.t2), g.m, g.n, g.k, &alpha, x1, g.ld1, s1, x2,
                                                g.ld2, s2, &beta, c, g.ldc, sc, batch));
}
// bf16 operands, f32 output and accumulation.
inline void gemm_cm(cublasHandle_t h, const ColGemm& g, float alpha, const bf16* x1, long long s1,
                    const bf16* x2, long long s2, float beta, float* c, long long sc, int batch) {
  if (batch == 1)
    ANYK_CUBLAS_CHECK(cublasGemmEx(h, op(g.t1), op(g.t2), g.m, g.n, g.k, &alpha, x1, CUDA_R_16BF, g.ld1, x2,
                                   CUDA_R_16BF, g.ld2, &beta, c, CUDA_R_32F, g.ldc, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
  else
    ANYK_CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, op(g.t1), op(g.t2), g.m, g.n, g.k, &alpha, x1, CUDA_R_16BF,
                                                 g.ld1, s1, x2, CUDA_R_16BF, g.ld2, s2, &beta, c, CUDA_R_32F,
                                                 g.ldc, sc, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

template <class T> __global__ void zero_matrices_k(T* c, int M, int N, int ldc, long long sc, int batch) {
  ANYK_GRID_STRIDE(i, int64_t(batch) * M * N) {
    const int64_t b = i / (int64_t(M) * N), r = (i / N) % M, col = i % N;
    c[b * sc + r * ldc + col] = T(0);
  }
}

// Row-major C (M,N) = alpha op(A) op(B) + beta C, batch matrices apart by sA, sB, sC elements.
// beta is 0 (assign) or 1 (accumulate).
template <class G, class T>
void gemm_rm(const Ctx& ctx, const RowGemm& r, T alpha, const G* A, long long sA, const G* B, long long sB, T beta,
             T* C, long long sC, int batch = 1) {
  if (r.M <= 0 || r.N <= 0 || batch <= 0) return;
  if (r.K <= 0) {  // cuBLAS would reject the zero leading dimensions: C = beta C by hand
    if (beta == T(0)) {
      zero_matrices_k<<<grid_for(int64_t(batch) * r.M * r.N), kThreads, 0, stream_of(ctx)>>>(C, r.M, r.N, r.ldc, sC,
                                                                                           batch);
      check_launch("dense zero_matrices");
    }
    return;
  }
  gemm_cm(blas_on(ctx), to_col_major(r), alpha, B, sB, A, sA, beta, C, sC, batch);
}

}  // namespace anyk::cuda::dense
