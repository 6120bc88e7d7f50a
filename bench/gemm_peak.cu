// The card's attainable bf16 GEMM rate, as a reference for MFU: an N^3 cuBLAS GEMM with bf16
// inputs and outputs and f32 accumulation (N = 8192 by default), 3 warm-up calls, then the median
// of 20 timed calls (CUDA events). Prints one JSON line:
//   {"gemm": "bf16", "n": 8192, "tflops_median": ..., "tflops_best": ..., "device": "..."}
// Usage: gemm_peak [N]. Built by CMake under ANYK_CUDA (target gemm_peak), or by bench/gpu_bench.sh
// with nvcc.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK_CUDA(x)                                                                          \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "gemm_peak: %s failed: %s\n", #x, cudaGetErrorString(e_));          \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)
#define CHECK_BLAS(x)                                                                          \
  do {                                                                                         \
    cublasStatus_t s_ = (x);                                                                   \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
      std::fprintf(stderr, "gemm_peak: %s failed: status %d\n", #x, int(s_));                  \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

__global__ void fill_bf16(__nv_bfloat16* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    p[i] = __float2bfloat16(float(h & 0xffff) / 65536.0f - 0.5f);
  }
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 8192;
  if (n <= 0) {
    std::fprintf(stderr, "gemm_peak: N must be a positive integer, got '%s'\n", argv[1]);
    return 2;
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device visible\n");
    return 77;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const size_t elems = size_t(n) * n;
  __nv_bfloat16 *a, *b, *c;
  CHECK_CUDA(cudaMalloc(&a, elems * sizeof(*a)));
  CHECK_CUDA(cudaMalloc(&b, elems * sizeof(*b)));
  CHECK_CUDA(cudaMalloc(&c, elems * sizeof(*c)));
  fill_bf16<<<1024, 256>>>(a, elems, 1u);
  fill_bf16<<<1024, 256>>>(b, elems, 2u);
  CHECK_CUDA(cudaGetLastError());
  cublasHandle_t h;
  CHECK_BLAS(cublasCreate(&h));
  const float alpha = 1.0f, beta = 0.0f;
  auto gemm = [&] {
    CHECK_BLAS(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &beta,
                            c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  for (int i = 0; i < 3; ++i) gemm();
  cudaEvent_t t0, t1;
  CHECK_CUDA(cudaEventCreate(&t0));
  CHECK_CUDA(cudaEventCreate(&t1));
  std::vector<double> tflops;
  for (int i = 0; i < 20; ++i) {
    CHECK_CUDA(cudaEventRecord(t0));
    gemm();
    CHECK_CUDA(cudaEventRecord(t1));
    CHECK_CUDA(cudaEventSynchronize(t1));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, t0, t1));
    tflops.push_back(2.0 * n * double(n) * n / (ms * 1e-3) / 1e12);
  }
  std::sort(tflops.begin(), tflops.end());
  std::printf("{\"gemm\": \"bf16\", \"n\": %d, \"tflops_median\": %.1f, \"tflops_best\": %.1f, \"device\": \"%s\"}\n", n,
              0.5 * (tflops[9] + tflops[10]), tflops.back(), prop.name);
  cublasDestroy(h);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return 0;
}
