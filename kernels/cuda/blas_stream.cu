// blas_on (common.cuh): the backend's cuBLAS handle bound to a kernel call's stream without
// losing the handle's workspace.
#include <map>
#include <mutex>

#include "kernels/cuda/common.cuh"

namespace anyk::cuda {

namespace {
// Each cuBLAS workspace set here, by stream: a workspace is only reused on its own stream, whose
// order keeps its GEMMs from overlapping (the reason cuBLAS drops the old one on a stream change).
// Created on first use, 32 MiB like init()'s, never freed (outside mem_high_water, like the side
// streams' workspaces).
constexpr size_t kStreamWorkspace = size_t(32) << 20;
std::mutex g_mu;
std::map<cudaStream_t, void*> g_workspaces;
}  // namespace

cublasHandle_t blas_on(const Ctx& ctx) {
  cublasHandle_t h = blas();
  const cudaStream_t want = stream_of(ctx);
  cudaStream_t cur = nullptr;
  ANYK_CUBLAS_CHECK(cublasGetStream(h, &cur));
  if (cur == want) return h;  // the usual case: no cublasSetStream, init()'s workspace stays
  std::lock_guard<std::mutex> lock(g_mu);
  void*& ws = g_workspaces[want];
  if (!ws) ANYK_CUDA_CHECK(cudaMalloc(&ws, kStreamWorkspace));
  ANYK_CUBLAS_CHECK(cublasSetStream(h, want));  // resets the workspace to cuBLAS' default pool...
  ANYK_CUBLAS_CHECK(cublasSetWorkspace(h, ws, kStreamWorkspace));  // ...so set one again at once
  return h;
}

}  // namespace anyk::cuda
