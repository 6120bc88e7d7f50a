// Allocator registry, the CPU allocator and the copy ops; see device.h.
#include "runtime/device.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

namespace anyk {

namespace {
size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

class CpuAllocator final : public Allocator {
 public:
  void* alloc(size_t bytes, size_t align) override {
    void* p = std::aligned_alloc(align < 64 ? 64 : align, round_up(bytes ? bytes : 1, align < 64 ? 64 : align));
    if (!p) throw std::bad_alloc();
    return p;
  }
  void free(void* p, size_t) override { std::free(p); }
  void zero(void* p, size_t bytes) override { std::memset(p, 0, bytes); }
  void to_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void from_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
};

constexpr int kMaxDevices = 8;
Allocator* g_alloc[kMaxDevices] = {};

Allocator*& slot(Device d) {
  int i = static_cast<int>(d);
  ANYK_CHECK(i >= 0 && i < kMaxDevices, "device index " << i << " is out of range");
  return g_alloc[i];
}
}  // namespace

Allocator& allocator(Device d) {
  if (d == Device::CPU) {
    static CpuAllocator cpu;
    return cpu;
  }
  Allocator* a = slot(d);
  ANYK_CHECK(a, "no allocator registered for device " << device_name(d)
                                                      << " hint: the backend for it is not built or not registered");
  return *a;
}

void register_allocator(Device d, Allocator* a) {
  ANYK_CHECK(d != Device::CPU, "the CPU allocator is built in and cannot be replaced");
  slot(d) = a;
}

void DeviceBuffer::resize(Device d, size_t bytes) {
  release();
  dev_ = d;
  n_ = bytes;
  if (bytes == 0) return;
  size_t rounded = round_up(bytes, 64);
  p_ = allocator(d).alloc(rounded, 64);
  allocator(d).zero(p_, rounded);
}

void DeviceBuffer::zero() {
  if (p_) allocator(dev_).zero(p_, n_);
}

void DeviceBuffer::release() {
  if (p_) allocator(dev_).free(p_, round_up(n_, 64));
  p_ = nullptr;
  n_ = 0;
}

void to_host(void* host_dst, const Tensor& src) {
  if (src.bytes()) allocator(src.device).to_host(host_dst, src.data, src.bytes());
}

void from_host(const Tensor& dst, const void* host_src) {
  if (dst.bytes()) allocator(dst.device).from_host(dst.data, host_src, dst.bytes());
}

void copy(const Tensor& dst, const Tensor& src) {
  ANYK_CHECK(dst.dtype == src.dtype && dst.numel() == src.numel(),
             "copy: " << dtype_name(src.dtype) << src.shape.str() << " into " << dtype_name(dst.dtype)
                      << dst.shape.str());
  if (!src.bytes()) return;
  if (dst.device == src.device) {
    allocator(dst.device).copy(dst.data, src.data, src.bytes());
    return;
  }
  std::vector<std::byte> stage(src.bytes());
  to_host(stage.data(), src);
  from_host(dst, stage.data());
}

void zero(const Tensor& t) {
  if (t.bytes()) allocator(t.device).zero(t.data, t.bytes());
}

}  // namespace anyk
