// Built when ANYK_CUDA=OFF: the CUDA entry points exist but say clearly that they are absent.
#include "kernels/cuda_api.h"

#include "runtime/check.h"

namespace anyk::cuda {

bool built_with_cuda() { return false; }
int device_count() { return 0; }
void require_cuda(const char* what) {
  ANYK_FAIL(what << ": anyk was built without CUDA kernels. hint: reconfigure with "
                    "cmake -DANYK_CUDA=ON on a machine with the CUDA toolkit");
}

}  // namespace anyk::cuda
