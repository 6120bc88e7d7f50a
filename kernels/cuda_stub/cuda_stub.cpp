// Built when ANYK_CUDA=OFF: the CUDA entry points exist but say clearly that they are absent.
#include "kernels/cuda_api.h"

#include <atomic>

#include "kernels/cuda/expert_gemm_plan.cuh"  // host-only: the strategy names
#include "core/check.h"

namespace anyk::cuda {

bool built_with_cuda() { return false; }
int device_count() { return 0; }
void require_cuda(const char* what) {
  ANYK_FAIL(what << ": anyk was built without CUDA kernels. hint: reconfigure with "
                    "cmake -DANYK_CUDA=ON on a machine with the CUDA toolkit");
}
DeviceInfo init(int, bool) {
  require_cuda("--device cuda");
  return {};
}
void* mem_alloc(size_t) {
  require_cuda("CUDA memory");
  return nullptr;
}
void mem_free(void*, size_t) {}
void mem_zero(void*, size_t) { require_cuda("CUDA memory"); }
void mem_to_host(void*, const void*, size_t) { require_cuda("CUDA memory"); }
void mem_from_host(void*, const void*, size_t) { require_cuda("CUDA memory"); }
void mem_copy(void*, const void*, size_t) { require_cuda("CUDA memory"); }
void synchronize() {}
size_t mem_high_water() { return 0; }
void* stream() { return nullptr; }

namespace {
std::atomic<int> g_expert_gemm{int(xgemm::Strategy::Loop)};
}
// Kept and checked like the CUDA build's (tests switch it); nothing here uses it.
void set_expert_gemm(const std::string& name) { g_expert_gemm = int(xgemm::parse_strategy(name)); }
std::string expert_gemm() { return xgemm::strategy_name(xgemm::Strategy(g_expert_gemm.load())); }

}  // namespace anyk::cuda
