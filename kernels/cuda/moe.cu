// CUDA kernels of the MoE permutation: row gather / weighted scatter-add (to experts and back)
// and the per-expert grouped matmul. Semantics of kernels/cpu/moe.cpp. Every many-to-one row
// accumulation goes through scatter_add_rows_sorted (stable sort by destination, then each
// destination sums its rows in increasing m like the CPU loop): no float atomics anywhere.
#include <cuda_bf16.h>

#include <cub/device/device_radix_sort.cuh>
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace anyk::cuda {

namespace {

constexpr int kThreads = 256;

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

__global__ void iota_k(int32_t* v, int M) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < M) v[i] = i;
}

// One block per sorted position; the first position of each destination's run sums that run in
// sorted (= increasing m, the sort being stable) order onto the destination row.
template <class T>
__global__ void sorted_row_sum_k(T* dst, const T* src, const int32_t* keys, const int32_t* rows,
                                 const T* w, const int32_t* widx, int M, int C) {
  const int i = blockIdx.x;
  const int d = keys[i];
  if (d < 0 || (i > 0 && keys[i - 1] == d)) return;
  T* out = dst + int64_t(d) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    T acc = out[c];
    for (int j = i; j < M && keys[j] == d; ++j) {
      const int m = rows[j];
      const T s = w ? w[widx ? widx[m] : m] : T(1);
      acc += s * src[int64_t(m) * C + c];
    }
    out[c] = acc;
  }
}

}  // namespace

template <class T>
void scatter_add_rows_sorted(cudaStream_t s, T* dst, const T* src, const int32_t* dest, const T* w,
                             const int32_t* widx, int M, int C) {
  if (M <= 0 || C <= 0) return;
  size_t sort_bytes = 0;
  ANYK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, dest, static_cast<int32_t*>(nullptr),
                                                  static_cast<const int32_t*>(nullptr),
                                                  static_cast<int32_t*>(nullptr), M, 0, 32, s));
  // One workspace() call for all scratch: sorted keys, row ids in and out, CUB's temporary.
  const size_t ids = align256(sizeof(int32_t) * size_t(M));
  char* ws = static_cast<char*>(workspace(3 * ids + sort_bytes));
  auto* keys = reinterpret_cast<int32_t*>(ws);
  auto* rows_in = reinterpret_cast<int32_t*>(ws + ids);
  auto* rows = reinterpret_cast<int32_t*>(ws + 2 * ids);
  iota_k<<<blocks_for(M), kThreads, 0, s>>>(rows_in, M);
  check_launch("scatter_add_rows_sorted/iota");
  // Signed keys: negative destinations (skipped rows) sort first. LSD radix sort is stable.
  ANYK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(ws + 3 * ids, sort_bytes, dest, keys, rows_in, rows, M,
                                                  0, 32, s));
  sorted_row_sum_k<T><<<unsigned(M), 128, 0, s>>>(dst, src, keys, rows, w, widx, M, C);
  check_launch("scatter_add_rows_sorted");
}

namespace {

// ---- gather / scatter ----

template <class T> __global__ void gather_rows_k(T* out, const T* x, const int32_t* rows, int64_t n, int C) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t m = i / C, c = i % C;
  out[i] = x[int64_t(rows[m]) * C + c];
}

template <class T>
void gather_rows_forward(const Ctx& ctx, T* out, const T* x, const int32_t* rows, int M, int C) {
  const int64_t n = int64_t(M) * C;
  if (n <= 0) return;
  gather_rows_k<T><<<blocks_for(n), kThreads, 0, stream_of(ctx)>>>(out, x, rows, n, C);
  check_launch("gather_rows_forward");
}

template <class T>
void gather_rows_backward(const Ctx& ctx, T* dx, const T* dout, const int32_t* rows, int M, int C) {
  scatter_add_rows_sorted<T>(stream_of(ctx), dx, dout, rows, nullptr, nullptr, M, C);
}

template <class T>
void scatter_add_rows_forward(const Ctx& ctx, T* out, const T* y, const T* w, const int32_t* tok,
                              const int32_t* widx, int M, int C) {
  scatter_add_rows_sorted<T>(stream_of(ctx), out, y, tok, w, widx, M, C);
}

// dy[m] += w[widx[m]] * dout[tok[m]]: each m owns its row.
template <class T>
__global__ void scatter_dy_k(T* dy, const T* dout, const T* w, const int32_t* tok, const int32_t* widx,
                             int64_t n, int C) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t m = i / C, c = i % C;
  const T s = w ? w[widx ? widx[m] : m] : T(1);
  dy[i] += s * dout[int64_t(tok[m]) * C + c];
}

// dw[widx[m]] += dot(dout[tok[m]], y[m]): one warp per m, lane-strided partial sums then a fixed
// shuffle tree (deterministic). Slots widx[m] are unique, so no two warps write one entry.
template <class T>
__global__ void scatter_dw_k(T* dw, const T* dout, const T* y, const int32_t* tok, const int32_t* widx,
                             int M, int C) {
  const int m = int((int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32);
  const int lane = threadIdx.x % 32;
  if (m >= M) return;  // whole warps leave together (blockDim is a multiple of 32)
  const T* g = dout + int64_t(tok[m]) * C;
  const T* ym = y + int64_t(m) * C;
  T dot = 0;
  for (int c = lane; c < C; c += 32) dot += g[c] * ym[c];
  for (int off = 16; off > 0; off /= 2) dot += __shfl_down_sync(0xffffffffu, dot, off);
  if (lane == 0) dw[widx ? widx[m] : m] += dot;
}

template <class T>
void scatter_add_rows_backward(const Ctx& ctx, T* dy, T* dw, const T* dout, const T* y, const T* w,
                               const int32_t* tok, const int32_t* widx, int M, int C) {
  const int64_t n = int64_t(M) * C;
  if (n <= 0) return;
  if (dy) {
    scatter_dy_k<T><<<blocks_for(n), kThreads, 0, stream_of(ctx)>>>(dy, dout, w, tok, widx, n, C);
    check_launch("scatter_add_rows_backward/dy");
  }
  if (dw) {
    scatter_dw_k<T><<<blocks_for(int64_t(M) * 32), kThreads, 0, stream_of(ctx)>>>(dw, dout, y, tok, widx, M, C);
    check_launch("scatter_add_rows_backward/dw");
  }
}

// ---- grouped linear: one cuBLAS GEMM per non-empty expert ----
// Next step for many small experts: cublasGemmGroupedBatchedEx (one call for all experts), or
// one GEMM per expert spread over streams, whichever measures faster.

__global__ void to_bf16_k(__nv_bfloat16* out, const float* x, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}

// A GEMM operand: T elements, or their bf16 copy in the workspace.
struct Operand {
  const void* p;
  size_t elem;
  Operand at(int64_t off) const { return {static_cast<const char*>(p) + off * int64_t(elem), elem}; }
};

// Converts n floats of x into the bf16 buffer at *cursor (advanced, 256-byte aligned).
Operand as_bf16(cudaStream_t s, char** cursor, const float* x, int64_t n) {
  auto* out = reinterpret_cast<__nv_bfloat16*>(*cursor);
  *cursor += align256(sizeof(__nv_bfloat16) * size_t(n));
  if (n > 0) {
    to_bf16_k<<<blocks_for(n), kThreads, 0, s>>>(out, x, n);
    check_launch("grouped_linear/to_bf16");
  }
  return {out, sizeof(__nv_bfloat16)};
}

size_t bf16_bytes(int64_t n) { return align256(2 * size_t(n > 0 ? n : 0)); }

// Column-major C (m,n) = beta C + op(A) op(B): f32/f64 GEMMs, or bf16 inputs with f32 output and
// f32 accumulation.
template <class T>
void gemm(cublasHandle_t h, bool bf16, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
          Operand A, int lda, Operand B, int ldb, T beta, T* C, int ldc) {
  const T alpha = 1;
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) {
      ANYK_CUBLAS_CHECK(cublasGemmEx(h, ta, tb, m, n, k, &alpha, A.p, CUDA_R_16BF, lda, B.p, CUDA_R_16BF, ldb,
                                     &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      return;
    }
    ANYK_CUBLAS_CHECK(cublasSgemm(h, ta, tb, m, n, k, &alpha, static_cast<const float*>(A.p), lda,
                                  static_cast<const float*>(B.p), ldb, &beta, C, ldc));
  } else {
    ANYK_CUBLAS_CHECK(cublasDgemm(h, ta, tb, m, n, k, &alpha, static_cast<const double*>(A.p), lda,
                                  static_cast<const double*>(B.p), ldb, &beta, C, ldc));
  }
}

template <class T> bool use_bf16(const Ctx& ctx) { return std::is_same_v<T, float> && ctx.gemm_bf16; }

cublasHandle_t blas_on(const Ctx& ctx) {
  cublasHandle_t h = blas();
  ANYK_CUBLAS_CHECK(cublasSetStream(h, stream_of(ctx)));
  return h;
}

// Rows of expert e: offsets (host memory) must be non-decreasing from a non-negative start.
int expert_rows(const int32_t* offsets, int e) {
  const int rows = offsets[e + 1] - offsets[e];
  ANYK_CHECK(offsets[e] >= 0 && rows >= 0, "grouped_linear: offsets[" << e << "] = " << offsets[e]
                                                << ", offsets[" << e + 1 << "] = " << offsets[e + 1]
                                                << " are not a non-decreasing split of the rows");
  return rows;
}

// Row-major out_e (rows,O) = x_e (rows,I) · w_e (O,I)^T is column-major out_e^T (O,rows) =
// op_T(w_e as (I,O)) · (x_e^T as (I,rows)).
template <class T>
void grouped_linear_forward(const Ctx& ctx, T* out, const T* x, const T* w, const int32_t* offsets, int E,
                            int I, int O) {
  if (E <= 0 || O <= 0 || offsets[E] <= 0) return;
  const cudaStream_t s = stream_of(ctx);
  if (I <= 0) {  // empty inner dimension: the product is zero
    ANYK_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(T) * size_t(offsets[E]) * O, s));
    return;
  }
  const bool bf16 = use_bf16<T>(ctx);
  Operand xa{x, sizeof(T)}, wa{w, sizeof(T)};
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) {  // one workspace() call holds both converted operands
      const int64_t nx = int64_t(offsets[E]) * I, nw = int64_t(E) * O * I;
      char* cur = static_cast<char*>(workspace(bf16_bytes(nx) + bf16_bytes(nw)));
      xa = as_bf16(s, &cur, x, nx);
      wa = as_bf16(s, &cur, w, nw);
    }
  }
  cublasHandle_t h = blas_on(ctx);
  for (int e = 0; e < E; ++e) {
    const int rows = expert_rows(offsets, e), r0 = offsets[e];
    if (rows == 0) continue;  // an expert with no rows is skipped
    gemm<T>(h, bf16, CUBLAS_OP_T, CUBLAS_OP_N, O, rows, I, wa.at(int64_t(e) * O * I), I,
            xa.at(int64_t(r0) * I), I, T(0), out + int64_t(r0) * O, O);
  }
}

// dx_e (rows,I) += dY_e (rows,O) · w_e (O,I): column-major dx_e^T (I,rows) += (w_e as (I,O)) ·
// (dY_e^T as (O,rows)). dw_e (O,I) += dY_e^T · x_e: column-major dw_e^T (I,O) += (x_e^T as
// (I,rows)) · op_T(dY_e^T as (O,rows)).
template <class T>
void grouped_linear_backward(const Ctx& ctx, T* dx, T* dw, const T* dout, const T* x, const T* w,
                             const int32_t* offsets, int E, int I, int O) {
  if (E <= 0 || I <= 0 || O <= 0 || offsets[E] <= 0 || (!dx && !dw)) return;
  const cudaStream_t s = stream_of(ctx);
  const bool bf16 = use_bf16<T>(ctx);
  Operand da{dout, sizeof(T)}, xa{x, sizeof(T)}, wa{w, sizeof(T)};
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) {
      const int64_t nd = int64_t(offsets[E]) * O, nx = dw ? int64_t(offsets[E]) * I : 0,
                    nw = dx ? int64_t(E) * O * I : 0;
      char* cur = static_cast<char*>(workspace(bf16_bytes(nd) + bf16_bytes(nx) + bf16_bytes(nw)));
      da = as_bf16(s, &cur, dout, nd);
      if (dw) xa = as_bf16(s, &cur, x, nx);
      if (dx) wa = as_bf16(s, &cur, w, nw);
    }
  }
  cublasHandle_t h = blas_on(ctx);
  for (int e = 0; e < E; ++e) {
    const int rows = expert_rows(offsets, e), r0 = offsets[e];
    if (rows == 0) continue;
    if (dx)
      gemm<T>(h, bf16, CUBLAS_OP_N, CUBLAS_OP_N, I, rows, O, wa.at(int64_t(e) * O * I), I,
              da.at(int64_t(r0) * O), O, T(1), dx + int64_t(r0) * I, I);
    if (dw)
      gemm<T>(h, bf16, CUBLAS_OP_N, CUBLAS_OP_T, I, O, rows, xa.at(int64_t(r0) * I), I,
              da.at(int64_t(r0) * O), O, T(1), dw + int64_t(e) * O * I, I);
  }
}

}  // namespace

template <class T> void fill_moe(Kernels<T>& k) {
  k.gather_rows_forward = gather_rows_forward<T>;
  k.gather_rows_backward = gather_rows_backward<T>;
  k.scatter_add_rows_forward = scatter_add_rows_forward<T>;
  k.scatter_add_rows_backward = scatter_add_rows_backward<T>;
  k.grouped_linear_forward = grouped_linear_forward<T>;
  k.grouped_linear_backward = grouped_linear_backward<T>;
}

template void scatter_add_rows_sorted<float>(cudaStream_t, float*, const float*, const int32_t*, const float*,
                                             const int32_t*, int, int);
template void scatter_add_rows_sorted<double>(cudaStream_t, double*, const double*, const int32_t*,
                                              const double*, const int32_t*, int, int);
template void fill_moe<float>(Kernels<float>&);
template void fill_moe<double>(Kernels<double>&);

}  // namespace anyk::cuda
