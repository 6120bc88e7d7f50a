// Memory per device. An Allocator owns a device's memory and moves bytes between it and the
// host; a registry maps each Device to its allocator (the CPU one is built in, a backend or a
// test registers the others). DeviceBuffer is an owning allocation on one device; the copy ops
// below are the only way host code reads or writes device data.
#pragma once
#include <cstddef>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace anyk {

class Allocator {
 public:
  virtual ~Allocator() = default;
  // Uninitialised memory of `bytes` (> 0), aligned to `align` (a power of two <= 4096).
  virtual void* alloc(size_t bytes, size_t align) = 0;
  virtual void free(void* p, size_t bytes) = 0;
  virtual void zero(void* p, size_t bytes) = 0;
  virtual void to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void from_host(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // within this device
};

// The allocator of a device; throws naming the device when none is registered.
Allocator& allocator(Device d);
// Registers (or, with nullptr, removes) the allocator of a non-CPU device. Not thread-safe:
// call it before any memory of that device exists.
void register_allocator(Device d, Allocator* a);

// An owning allocation of `bytes` on one device, zeroed, 64-byte aligned.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Device d, size_t bytes) { resize(d, bytes); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    swap(o);
    return *this;
  }
  ~DeviceBuffer() { release(); }

  void resize(Device d, size_t bytes);  // frees the old memory; the new one is zeroed
  void zero();
  void* data() const { return p_; }
  size_t bytes() const { return n_; }
  Device device() const { return dev_; }

 private:
  void release();
  void swap(DeviceBuffer& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    std::swap(dev_, o.dev_);
  }
  void* p_ = nullptr;
  size_t n_ = 0;
  Device dev_ = Device::CPU;
};

// Copy ops. Sizes must match (same dtype and element count).
void to_host(void* host_dst, const Tensor& src);        // src.bytes() bytes
void from_host(const Tensor& dst, const void* host_src);  // dst.bytes() bytes
void copy(const Tensor& dst, const Tensor& src);          // any two devices (staged through the host)
void zero(const Tensor& t);

template <class T> std::vector<T> to_host_vector(const Tensor& src) {
  std::vector<T> v(static_cast<size_t>(src.numel()));
  ANYK_CHECK(src.dtype == dtype_of<T>(), "to_host_vector: tensor is " << dtype_name(src.dtype));
  if (!v.empty()) to_host(v.data(), src);
  return v;
}
// One element of a tensor, read through the copy ops.
template <class T> T read_element(const Tensor& src, int64_t i = 0) {
  ANYK_CHECK(src.dtype == dtype_of<T>() && i >= 0 && i < src.numel(),
             "read_element " << i << " of a " << dtype_name(src.dtype) << " tensor " << src.shape.str());
  T v;
  allocator(src.device).to_host(&v, static_cast<const T*>(src.data) + i, sizeof(T));
  return v;
}

}  // namespace anyk
