// CUDA kernels of the MoE permutation: row gather / weighted scatter-add (to experts and back)
// and the per-expert grouped matmul. Semantics of kernels/cpu/moe.cpp. Every many-to-one row
// accumulation goes through scatter_add_rows_sorted (stable sort by destination, then each
// destination sums its rows in increasing m like the CPU loop): no float atomics anywhere.
#include <cuda_bf16.h>

#include <cub/device/device_radix_sort.cuh>
#include <cstdio>
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

// ---- grouped linear: the experts' GEMMs over their variable row counts ----
// kernels/cuda/expert_gemm_plan.cuh plans one GEMM per non-empty expert and kind (shapes, leading
// dimensions, operand offsets, beta); issue() runs the plan with the strategy in force:
//   loop     each GEMM in expert order on the backend's stream and handle;
//   streams  each GEMM on side stream g.stream (round-robin) with that stream's own cuBLAS handle,
//            forked from and joined back to the backend's stream with events. No race: every
//            GEMM writes disjoint memory (its expert's out or dx rows, its dw block) and only
//            reads operands that nothing writes until the join;
//   grouped  one grouped batched cuBLAS call per kind, one group (of size 1) per GEMM, the device
//            arrays of A/B/C pointers uploaded through pinned staging on the backend's stream.
//            bf16 inputs with f32 output may not be in cublasGemmGroupedBatchedEx's type table (our
//            reading of the docs, unverified): the first bf16 call tries them, and if cuBLAS
//            refuses, that call's remaining batches and every later bf16 call run as `loop` (a
//            one-line notice on stderr says so).
// With --precision bf16, A and B are bf16 copies in the workspace whose rows are padded
// (xgemm::bf16_layout) so that every expert's operand pointer is 16-byte aligned.

// out (rows, ld) = bf16(x (rows, cols)), row-major; the ld - cols padding elements of each row are
// not written (no GEMM reads them). n = rows * cols.
__global__ void to_bf16_rows_k(__nv_bfloat16* out, const float* x, int64_t n, int cols, int ld) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t r = i / cols, c = i % cols;
  out[r * ld + c] = __float2bfloat16_rn(x[i]);
}

// A GEMM operand: T elements, or their bf16 copy in the workspace.
struct Operand {
  const void* p;
  size_t elem;
  Operand at(int64_t off) const { return {static_cast<const char*>(p) + off * int64_t(elem), elem}; }
};

// Bytes of a bf16 copy of `rows` rows with row stride ld (elements), 256-byte aligned.
size_t bf16_bytes(int64_t rows, int ld) { return align256(2 * size_t(rows > 0 ? rows : 0) * size_t(ld > 0 ? ld : 0)); }

// Converts x (rows, cols) floats into the bf16 buffer at *cursor with row stride ld (from
// xgemm::bf16_layout), advancing *cursor by bf16_bytes(rows, ld) (256-byte aligned).
Operand as_bf16(cudaStream_t s, char** cursor, const float* x, int64_t rows, int cols, int ld) {
  auto* out = reinterpret_cast<__nv_bfloat16*>(*cursor);
  *cursor += bf16_bytes(rows, ld);
  const int64_t n = rows * cols;
  if (n > 0) {
    to_bf16_rows_k<<<blocks_for(n), kThreads, 0, s>>>(out, x, n, cols, ld);
    check_launch("grouped_linear/to_bf16");
  }
  return {out, sizeof(__nv_bfloat16)};
}

cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

// One planned GEMM: column-major C = beta C + op(A) op(B) on handle h; f32/f64 GEMMs, or bf16
// inputs with f32 output and f32 accumulation.
template <class T>
void gemm(cublasHandle_t h, bool bf16, const xgemm::Gemm& g, Operand A, Operand B, T* C) {
  const T alpha = 1, beta = T(g.beta);
  const Operand a = A.at(g.a_off), b = B.at(g.b_off);
  T* c = C + g.c_off;
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) {
      ANYK_CUBLAS_CHECK(cublasGemmEx(h, op(g.ta), op(g.tb), g.m, g.n, g.k, &alpha, a.p, CUDA_R_16BF, g.lda, b.p,
                                     CUDA_R_16BF, g.ldb, &beta, c, CUDA_R_32F, g.ldc, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
      return;
    }
    ANYK_CUBLAS_CHECK(cublasSgemm(h, op(g.ta), op(g.tb), g.m, g.n, g.k, &alpha, static_cast<const float*>(a.p), g.lda,
                                  static_cast<const float*>(b.p), g.ldb, &beta, c, g.ldc));
  } else {
    ANYK_CUBLAS_CHECK(cublasDgemm(h, op(g.ta), op(g.tb), g.m, g.n, g.k, &alpha, static_cast<const double*>(a.p),
                                  g.lda, static_cast<const double*>(b.p), g.ldb, &beta, c, g.ldc));
  }
}

template <class T> bool use_bf16(const Ctx& ctx) { return std::is_same_v<T, float> && ctx.gemm_bf16; }

// One kind's planned GEMMs and their operands (A, B as T or bf16; C as T).
template <class T> struct Batch {
  const std::vector<xgemm::Gemm>* plan;
  Operand A, B;
  T* C;
};

// The host arrays of one grouped call (reused across calls).
struct GroupedArgs {
  std::vector<cublasOperation_t> ta, tb;
  std::vector<int> m, n, k, lda, ldb, ldc, size;
  void fill(const std::vector<xgemm::Gemm>& plan) {
    for (auto* v : {&m, &n, &k, &lda, &ldb, &ldc, &size}) v->clear();
    ta.clear();
    tb.clear();
    for (const xgemm::Gemm& g : plan) {
      ta.push_back(op(g.ta));
      tb.push_back(op(g.tb));
      m.push_back(g.m), n.push_back(g.n), k.push_back(g.k);
      lda.push_back(g.lda), ldb.push_back(g.ldb), ldc.push_back(g.ldc);
      size.push_back(1);  // one GEMM per group: every expert has its own shape
    }
  }
};

// cublasGemmGroupedBatchedEx with bf16 A/B and f32 C: -1 not tried yet, 1 accepted, 0 refused.
int g_grouped_bf16 = -1;

// One grouped call: f32 or bf16 inputs with f32 output through cublasGemmGroupedBatchedEx
// (CUBLAS_COMPUTE_32F: no TF32), f64 through cublasDgemmGroupedBatched. ptrs: device arrays
// A[G], B[G], C[G] back to back. Returns false, having done nothing, when cuBLAS refuses the
// bf16-in/f32-out combination on the first try (the caller then runs the plan as `loop`). Never
// called for bf16 once refused (g_grouped_bf16 == 0): the caller checks first.
template <class T>
bool grouped_call(cublasHandle_t h, bool bf16, const std::vector<xgemm::Gemm>& plan, void* const* ptrs) {
  static thread_local GroupedArgs a;
  static thread_local std::vector<T> alpha, beta;
  a.fill(plan);
  const int G = int(plan.size());
  alpha.assign(size_t(G), T(1));
  beta.clear();
  for (const xgemm::Gemm& g : plan) beta.push_back(T(g.beta));
  if constexpr (std::is_same_v<T, float>) {
    const cudaDataType_t ab = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasStatus_t st = cublasGemmGroupedBatchedEx(
        h, a.ta.data(), a.tb.data(), a.m.data(), a.n.data(), a.k.data(), alpha.data(), ptrs, ab, a.lda.data(),
        ptrs + G, ab, a.ldb.data(), beta.data(), ptrs + 2 * G, CUDA_R_32F, a.ldc.data(), G, a.size.data(),
        CUBLAS_COMPUTE_32F);
    if (bf16 && g_grouped_bf16 < 0 && (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE)) {
      g_grouped_bf16 = 0;
      std::fprintf(stderr, "anyk: cublasGemmGroupedBatchedEx refused bf16 inputs with f32 output (%s): "
                           "ANYK_EXPERT_GEMM=grouped runs bf16 expert GEMMs as loop\n", cublasGetStatusString(st));
      return false;
    }
    ANYK_CHECK(st == CUBLAS_STATUS_SUCCESS, "cublasGemmGroupedBatchedEx (" << G << " groups" << (bf16 ? ", bf16" : "")
                                                << ") failed: cuBLAS status " << int(st) << " ("
                                                << cublasGetStatusString(st) << ")");
    if (bf16) g_grouped_bf16 = 1;
  } else {
    ANYK_CUBLAS_CHECK(cublasDgemmGroupedBatched(
        h, a.ta.data(), a.tb.data(), a.m.data(), a.n.data(), a.k.data(), alpha.data(),
        reinterpret_cast<const double* const*>(ptrs), a.lda.data(), reinterpret_cast<const double* const*>(ptrs + G),
        a.ldb.data(), beta.data(), reinterpret_cast<double* const*>(ptrs + 2 * G), a.ldc.data(), G, a.size.data()));
  }
  return true;
}

// `grouped`: every batch's pointer arrays in one workspace() buffer, uploaded in one async copy,
// then one grouped call per batch, all on the backend's stream. ws: the call's one workspace()
// buffer, pointer arrays at its start (pointer_bytes), converted bf16 operands after them.
template <class T>
void issue_grouped(const Ctx& ctx, bool bf16, char* ws, std::initializer_list<Batch<T>> batches) {
  static thread_local std::vector<void*> host;
  host.clear();
  for (const Batch<T>& b : batches) {
    for (const xgemm::Gemm& g : *b.plan) host.push_back(const_cast<void*>(b.A.at(g.a_off).p));
    for (const xgemm::Gemm& g : *b.plan) host.push_back(const_cast<void*>(b.B.at(g.b_off).p));
    for (const xgemm::Gemm& g : *b.plan) host.push_back(b.C + g.c_off);
  }
  if (host.empty()) return;
  auto* dev = reinterpret_cast<void**>(ws);
  upload_async(stream_of(ctx), dev, host.data(), host.size() * sizeof(void*));
  cublasHandle_t h = blas_on(ctx);
  for (const Batch<T>& b : batches) {
    if (b.plan->empty()) continue;
    // Once cuBLAS has refused bf16 (in this call's first batch, or earlier), every remaining bf16
    // batch runs as `loop`: a second grouped call would fail the status check.
    const bool refused = bf16 && g_grouped_bf16 == 0;
    if (refused || !grouped_call<T>(h, bf16, *b.plan, dev))
      for (const xgemm::Gemm& g : *b.plan) gemm<T>(h, bf16, g, b.A, b.B, b.C);
    dev += 3 * b.plan->size();
  }
}

// The strategy for this call: `grouped` with bf16 operands runs as `loop` once cuBLAS refused them.
xgemm::Strategy strategy_for(bool bf16) {
  const xgemm::Strategy s = expert_gemm_strategy();
  return s == xgemm::Strategy::Grouped && bf16 && g_grouped_bf16 == 0 ? xgemm::Strategy::Loop : s;
}

// Workspace bytes in front of the bf16 operands: `grouped`'s device pointer arrays (3 per GEMM).
size_t pointer_bytes(xgemm::Strategy s, size_t gemms) {
  return s == xgemm::Strategy::Grouped ? align256(3 * gemms * sizeof(void*)) : 0;
}

// Runs the batches' planned GEMMs with strategy s (see the top of this section); ws: the call's
// workspace() buffer, which starts with pointer_bytes(s, ...) for `grouped`.
template <class T>
void issue(const Ctx& ctx, bool bf16, xgemm::Strategy s, char* ws, std::initializer_list<Batch<T>> batches) {
  if (s == xgemm::Strategy::Grouped) return issue_grouped<T>(ctx, bf16, ws, batches);
  if (s == xgemm::Strategy::Loop) {
    cublasHandle_t h = blas_on(ctx);
    for (const Batch<T>& b : batches)
      for (const xgemm::Gemm& g : *b.plan) gemm<T>(h, bf16, g, b.A, b.B, b.C);
    return;
  }
  size_t most = 0;  // side streams in use: the longest plan's GEMMs, at most kSideStreams
  for (const Batch<T>& b : batches) most = std::max(most, b.plan->size());
  if (most == 0) return;
  const cudaStream_t main = stream_of(ctx);
  fork_side_streams(main, int(most));
  for (const Batch<T>& b : batches)
    for (const xgemm::Gemm& g : *b.plan) gemm<T>(side_blas(g.stream), bf16, g, b.A, b.B, b.C);
  join_side_streams(main, int(most));
}

// The plans of the current call: forward, dx, dw (host memory reused across calls).
std::vector<xgemm::Gemm>& plan_buf(xgemm::Kind kind) {
  static thread_local std::vector<xgemm::Gemm> bufs[3];
  return bufs[int(kind)];
}

// Row-major out (M,O) = x (M,I) w_e (O,I)^T on each expert's rows (expert_gemm_plan.cuh).
template <class T>
void grouped_linear_forward(const Ctx& ctx, T* out, const T* x, const T* w, const int32_t* offsets, int E, int I,
                            int O) {
  if (E <= 0) return;
  const bool bf16 = use_bf16<T>(ctx);
  // bf16: A and B are padded-row copies (16-byte aligned operands); f32/f64: the caller's buffers.
  const xgemm::Layout ld = bf16 ? xgemm::bf16_layout(I, O) : xgemm::natural_layout(I, O);
  std::vector<xgemm::Gemm>& fwd = plan_buf(xgemm::Kind::Forward);
  xgemm::plan(fwd, offsets, E, I, O, xgemm::Kind::Forward, ld);  // checks the offsets
  if (O <= 0 || offsets[E] <= 0) return;
  const cudaStream_t s = stream_of(ctx);
  if (I <= 0) {  // empty inner dimension: the product is zero
    ANYK_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(T) * size_t(offsets[E]) * O, s));
    return;
  }
  if (fwd.empty()) return;
  const xgemm::Strategy strat = strategy_for(bf16);
  const int64_t rx = bf16 ? int64_t(offsets[E]) : 0, rw = bf16 ? int64_t(E) * O : 0;  // rows of the copies
  const size_t pb = pointer_bytes(strat, fwd.size()), bytes = pb + bf16_bytes(rx, ld.x) + bf16_bytes(rw, ld.w);
  char* ws = bytes ? static_cast<char*>(workspace(bytes)) : nullptr;  // one call: pointers, then bf16 x, w
  Operand xa{x, sizeof(T)}, wa{w, sizeof(T)};
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) {
      char* cur = ws + pb;
      xa = as_bf16(s, &cur, x, rx, I, ld.x);
      wa = as_bf16(s, &cur, w, rw, I, ld.w);
    }
  }
  issue<T>(ctx, bf16, strat, ws, {Batch<T>{&fwd, wa, xa, out}});
}

// dx_e (rows,I) += dY_e (rows,O) w_e (O,I); dw_e (O,I) += dY_e^T x_e (either may be null).
template <class T>
void grouped_linear_backward(const Ctx& ctx, T* dx, T* dw, const T* dout, const T* x, const T* w,
                             const int32_t* offsets, int E, int I, int O) {
  if (E <= 0) return;
  const bool bf16 = use_bf16<T>(ctx);
  // bf16: A and B are padded-row copies (16-byte aligned operands); f32/f64: the caller's buffers.
  const xgemm::Layout ld = bf16 ? xgemm::bf16_layout(I, O) : xgemm::natural_layout(I, O);
  std::vector<xgemm::Gemm>&pdx = plan_buf(xgemm::Kind::Dx), &pdw = plan_buf(xgemm::Kind::Dw);
  xgemm::plan(pdx, offsets, E, I, O, xgemm::Kind::Dx, ld);  // checks the offsets
  if (!dx) pdx.clear();
  if (dw) xgemm::plan(pdw, offsets, E, I, O, xgemm::Kind::Dw, ld);
  else pdw.clear();
  if (pdx.empty() && pdw.empty()) return;
  const cudaStream_t s = stream_of(ctx);
  const xgemm::Strategy strat = strategy_for(bf16);
  // Rows of the bf16 copies: dout (M,O) always, x (M,I) for dw, w (E*O,I) for dx.
  const int64_t M = offsets[E], rd = bf16 ? M : 0, rx = bf16 && dw ? M : 0, rw = bf16 && dx ? int64_t(E) * O : 0;
  const size_t pb = pointer_bytes(strat, pdx.size() + pdw.size()),
               bytes = pb + bf16_bytes(rd, ld.d) + bf16_bytes(rx, ld.x) + bf16_bytes(rw, ld.w);
  char* ws = bytes ? static_cast<char*>(workspace(bytes)) : nullptr;  // one call: pointers, then bf16 operands
  Operand da{dout, sizeof(T)}, xa{x, sizeof(T)}, wa{w, sizeof(T)};
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) {
      char* cur = ws + pb;
      da = as_bf16(s, &cur, dout, rd, O, ld.d);
      if (dw) xa = as_bf16(s, &cur, x, rx, I, ld.x);
      if (dx) wa = as_bf16(s, &cur, w, rw, I, ld.w);
    }
  }
  issue<T>(ctx, bf16, strat, ws, {Batch<T>{&pdx, wa, da, dx}, Batch<T>{&pdw, xa, da, dw}});
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
