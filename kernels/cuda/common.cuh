// Shared by the CUDA backend's .cu files only (never included outside kernels/cuda).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/expert_gemm_plan.cuh"
#include "kernels/kernels.h"
#include "core/check.h"

#define ANYK_CUDA_CHECK(call)                                                                         \
  do {                                                                                                \
    cudaError_t anyk_err_ = (call);                                                                   \
    ANYK_CHECK(anyk_err_ == cudaSuccess, #call << " failed: " << cudaGetErrorString(anyk_err_)        \
                                              << " hint: check nvidia-smi and CUDA_VISIBLE_DEVICES"); \
  } while (0)

#define ANYK_CUBLAS_CHECK(call)                                                             \
  do {                                                                                      \
    cublasStatus_t anyk_st_ = (call);                                                       \
    ANYK_CHECK(anyk_st_ == CUBLAS_STATUS_SUCCESS, #call << " failed: cuBLAS status "        \
                                                       << int(anyk_st_) << " (" << cublasGetStatusString(anyk_st_) << ")"); \
  } while (0)

namespace anyk::cuda {

inline cudaStream_t stream_of(const Ctx& c) { return static_cast<cudaStream_t>(c.stream); }
// The cuBLAS handle of the current device, bound to the backend's stream (created by init()).
cublasHandle_t blas();
// blas() bound to ctx's stream, for the GEMMs of a kernel call (blas_stream.cu). cublasSetStream
// resets the handle's workspace to cuBLAS' default pool (cuBLAS documentation, cublasSetStream),
// so it is called only when ctx's stream differs from the handle's (never, while every Ctx
// carries the backend's stream, which init() bound together with its workspace), and is then
// followed by cublasSetWorkspace with a workspace kept for that stream.
cublasHandle_t blas_on(const Ctx& ctx);
// Scratch device memory owned by the backend, grown on demand and reused (kernels that need a
// workspace, e.g. a sort, take it from here; valid until the next call on the same stream).
void* workspace(size_t bytes);
// Launch-configuration helper: blocks of `threads` covering n items (at least one block).
inline unsigned blocks_for(int64_t n, int threads = 256) {
  return unsigned(n <= 0 ? 1 : (n + threads - 1) / threads);
}
// Checks the last launch (cudaGetLastError) and names the kernel.
void check_launch(const char* kernel);

// Deterministic many-to-one row accumulation, shared by every kernel that adds rows into a
// destination chosen per row (embedding backward, gather backward, scatter_add forward):
// dst[dest[m]] (C) += (w ? w[widx ? widx[m] : m] : 1) * src[m] (C) for m in [0, M); rows with
// dest[m] < 0 are skipped. No float atomics: the rows are stably sorted by destination (CUB
// radix sort, scratch from workspace()) and each destination sums its rows in increasing m, the
// order of the CPU loop. Implemented in moe.cu.
template <class T>
void scatter_add_rows_sorted(cudaStream_t s, T* dst, const T* src, const int32_t* dest, const T* w,
                             const int32_t* widx, int M, int C);

// ---- grouped_linear's expert GEMM strategies (moe.cu; kernels/cuda/expert_gemm_plan.cuh) ----
// The strategy now in force (cuda::set_expert_gemm, ANYK_EXPERT_GEMM).
xgemm::Strategy expert_gemm_strategy();
// The cuBLAS handle of side stream i < xgemm::kSideStreams, bound to that stream, with its own
// workspace and the main handle's settings (TF32 off); streams and handles created on first use.
cublasHandle_t side_blas(int i);
// Side streams 0..min(n, kSideStreams)-1 wait for the work queued on `main` so far.
void fork_side_streams(cudaStream_t main, int n);
// `main` waits for the work queued so far on side streams 0..min(n, kSideStreams)-1.
void join_side_streams(cudaStream_t main, int n);
// Copies `bytes` of host memory to device memory dst on `stream` without waiting for the copy:
// the bytes go through one of a few pinned slots, each reused only once its last copy is done.
void upload_async(cudaStream_t stream, void* dst, const void* host, size_t bytes);

// Each .cu file fills its part of the table (called by table.cu for T = float and double).
template <class T> void fill_elementwise(Kernels<T>& k);  // elementwise.cu: fill..first_bad_id, adamw, bf16 conversions
template <class T> void fill_dense(Kernels<T>& k);        // dense.cu: embedding..cross_entropy, inference,
                                                          // add/scale forward and backward
template <class T> void fill_moe(Kernels<T>& k);          // moe.cu: gather/scatter rows, grouped_linear
template <class T> void fill_router(Kernels<T>& k);       // router.cu: router_forward..convert_from_f64
// table.cu: the filled tables (built once; throws naming the index of an entry left null).
template <class T> const Kernels<T>& kernel_table();

}  // namespace anyk::cuda
