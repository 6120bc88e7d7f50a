// The CUDA backend's entry points (built with ANYK_CUDA=ON). The model's kernels for the GPU
// come with the CUDA backend work; what exists now reports the devices and fails clearly.
#include <cuda_runtime.h>

#include "kernels/cuda_api.h"
#include "runtime/check.h"

#define ANYK_CUDA_CHECK(call)                                                               \
  do {                                                                                      \
    cudaError_t anyk_err_ = (call);                                                         \
    ANYK_CHECK(anyk_err_ == cudaSuccess, #call << " failed: " << cudaGetErrorString(anyk_err_) \
                                              << ". hint: check nvidia-smi and CUDA_VISIBLE_DEVICES"); \
  } while (0)

namespace anyk::cuda {

bool built_with_cuda() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;  // no driver or no GPU: zero devices
  return n;
}

void require_cuda(const char* what) {
  ANYK_CHECK(device_count() > 0, what << ": no CUDA device is visible. hint: run on a GPU node "
                                         "or drop --device cuda");
  ANYK_FAIL(what << ": the CUDA kernels of the model are not implemented yet. hint: use the CPU "
                    "backend (the default)");
}

}  // namespace anyk::cuda
