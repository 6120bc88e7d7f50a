// What the rest of anyk may ask of the CUDA backend. kernels/cuda implements it when the build
// has ANYK_CUDA=ON; kernels/cuda_stub otherwise (CMake picks the file, no #ifdef in callers).
// runtime/ wraps the mem_* functions in an Allocator for Device::CUDA (kernels/ cannot see
// runtime's Allocator class without a back-edge).
#pragma once
#include <cstddef>
#include <string>

namespace anyk::cuda {

bool built_with_cuda();
int device_count();  // 0 without a CUDA build, a GPU or a driver; throws when a driver is there but fails
// Throws a clear error naming `what` when the CUDA backend cannot serve it (no CUDA build, no GPU).
void require_cuda(const char* what);

struct DeviceInfo {
  int index = -1;       // the CUDA device this process uses
  int count = 0;        // devices visible to this process
  std::string name;     // e.g. "NVIDIA H100 80GB HBM3"
  int cc_major = 0, cc_minor = 0;
  size_t total_bytes = 0, free_bytes = 0;
};

// Makes GPU (local_rank % device_count()) current for this process, creates its stream and cuBLAS
// handle, and registers the CUDA kernel tables for Device::CUDA (their Ctx carries the stream and
// gemm_bf16). Idempotent for the same arguments. Throws naming the problem and the fix when the
// build lacks CUDA or no GPU is visible.
DeviceInfo init(int local_rank, bool gemm_bf16);
// The device's memory: cudaMalloc (never managed memory), cached by the backend so that a buffer
// freed and asked for again each step is reused. Copies run on the backend's stream; to_host and
// from_host return when the host buffer may be reused (staged through pinned memory).
void* mem_alloc(size_t bytes);
void mem_free(void* p, size_t bytes);
void mem_zero(void* p, size_t bytes);
void mem_to_host(void* host_dst, const void* src, size_t bytes);
void mem_from_host(void* dst, const void* host_src, size_t bytes);
void mem_copy(void* dst, const void* src, size_t bytes);
void synchronize();          // waits for the backend's stream
size_t mem_high_water();     // the most bytes cudaMalloc'd at once by mem_alloc
void* stream();              // the backend's cudaStream_t (for NCCL), nullptr before init

// How grouped_linear issues the experts' GEMMs: "loop" (the default: one cuBLAS GEMM per non-empty
// expert on the backend's stream), "streams" (the same GEMMs over 4 side streams) or "grouped"
// (one grouped batched cuBLAS call per GEMM kind); kernels/cuda/expert_gemm_plan.cuh, docs/gpu.md.
// init() applies ANYK_EXPERT_GEMM, when set, on its first call; set_expert_gemm changes the choice
// at any time (calls already queued keep theirs). Any other name throws, naming it and the choices.
void set_expert_gemm(const std::string& name);
std::string expert_gemm();

}  // namespace anyk::cuda
