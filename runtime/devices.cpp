// Device selection; see devices.h.
#include "runtime/devices.h"

#include <charconv>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <unordered_map>

#include "kernels/cuda_api.h"
#include "runtime/checked_device.h"
#include "runtime/device.h"

namespace anyk {

namespace {

// The CUDA backend's memory (kernels/cuda_api.h) as the Allocator of Device::CUDA. cudaMalloc
// aligns to 256 bytes; a larger alignment (the arena's 4096-byte chunks) over-allocates and
// remembers the block to free (only the arena asks for that, once per chunk).
class CudaAllocator final : public Allocator {
 public:
  void* alloc(size_t bytes, size_t align) override {
    if (align <= 256) return cuda::mem_alloc(bytes);
    void* raw = cuda::mem_alloc(bytes + align);
    const uintptr_t a = (reinterpret_cast<uintptr_t>(raw) + align - 1) / align * align;
    void* p = reinterpret_cast<void*>(a);
    shifted_[p] = {raw, bytes + align};
    return p;
  }
  void free(void* p, size_t bytes) override {
    auto it = shifted_.find(p);
    if (it == shifted_.end()) return cuda::mem_free(p, bytes);
    cuda::mem_free(it->second.first, it->second.second);
    shifted_.erase(it);
  }
  void zero(void* p, size_t bytes) override { cuda::mem_zero(p, bytes); }
  void to_host(void* dst, const void* src, size_t bytes) override { cuda::mem_to_host(dst, src, bytes); }
  void from_host(void* dst, const void* src, size_t bytes) override { cuda::mem_from_host(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { cuda::mem_copy(dst, src, bytes); }

 private:
  std::unordered_map<void*, std::pair<void*, size_t>> shifted_;  // returned -> (cudaMalloc'd, bytes)
};

std::string cuda_line(const cuda::DeviceInfo& i, bool bf16) {
  char buf[512];
  std::snprintf(buf, sizeof buf, "cuda:%d %s (%.1f GiB, %.1f free, sm_%d%d), %d of %d visible, %s, expert GEMMs: %s",
                i.index, i.name.c_str(), double(i.total_bytes) / (1 << 30), double(i.free_bytes) / (1 << 30),
                i.cc_major, i.cc_minor, i.index + 1, i.count, bf16 ? "bf16 GEMMs (f32 accumulation)" : "f32",
                cuda::expert_gemm().c_str());
  return buf;
}

}  // namespace

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") return Device::CUDA;
  if (name == "checked") return Device::Checked;
  ANYK_USAGE_FAIL("--device " << name << " is not a device hint: choose cpu, cuda or checked");
}

bool parse_bf16(const std::string& precision) {
  if (precision == "f32") return false;
  if (precision == "bf16") return true;
  ANYK_USAGE_FAIL("--precision " << precision << " is not a precision hint: choose f32 or bf16");
}

int local_rank_from_env() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
    const char* v = std::getenv(var);
    if (!v) continue;
    const std::string s(v);
    int r = -1;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), r);
    ANYK_CHECK(!s.empty() && ec == std::errc() && end == s.data() + s.size() && r >= 0,
               var << "='" << s << "' is not a node-local rank (a non-negative integer) hint: unset it or "
                   << "launch with mpirun or srun, which set it");
    return r;
  }
  return 0;
}

std::string use_device(Device d, bool bf16, double* free_bytes) {
  if (free_bytes) *free_bytes = -1;
  ANYK_USAGE_CHECK(!bf16 || d == Device::CUDA, "--precision bf16 needs --device cuda (the " << device_name(d)
                                             << " kernels compute in f32) hint: drop --precision or pass --device cuda");
  switch (d) {
    case Device::CPU: return "cpu";
    case Device::Checked: {
      register_checked_device();
      checked_pool().set_strict(true);
      report_checked_faults();
      return "checked (debugging: the CPU kernels on a guarded pool of " + std::to_string(checked_pool().reserved() >> 30) +
             " GiB address space the host cannot read, strict)";
    }
    case Device::CUDA: {
      const cuda::DeviceInfo info = cuda::init(local_rank_from_env(), bf16);
      static CudaAllocator alloc;
      register_allocator(Device::CUDA, &alloc);
      if (free_bytes) *free_bytes = double(info.free_bytes);
      return cuda_line(info, bf16);
    }
  }
  ANYK_FAIL("unknown device " << int(d));
}

}  // namespace anyk
