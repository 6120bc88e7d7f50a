// What the rest of anyk may ask of the CUDA backend. kernels/cuda implements it when the build
// has ANYK_CUDA=ON; kernels/cuda_stub otherwise (CMake picks the file, no #ifdef in callers).
#pragma once

namespace anyk::cuda {

bool built_with_cuda();
int device_count();  // 0 when built without CUDA or when no GPU is visible
// Throws a clear error naming `what` when the CUDA backend cannot serve it.
void require_cuda(const char* what);

}  // namespace anyk::cuda
