// Tensor: a non-owning view (pointer, shape outermost-first with at most 4 dims, dtype, device).
// Memory is owned elsewhere: the flat parameter store or the step arena.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/check.h"
#include "core/types.h"

namespace anyk {

// F32/F64: compute (f64 for the gradient checks). I32: ids, counts, offsets. BF16: storage only
// (mixed precision later); converted through kernels.
struct Shape {
  std::array<int64_t, 4> d{0, 0, 0, 0};
  int ndim = 0;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) {
    ANYK_CHECK(dims.size() <= 4, "tensors have at most 4 dims, got " << dims.size());
    for (int64_t v : dims) d[ndim++] = v;
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= d[i];
    return n;
  }
  int64_t operator[](int i) const { return d[i < 0 ? ndim + i : i]; }
  bool operator==(const Shape& o) const {
    if (ndim != o.ndim) return false;
    for (int i = 0; i < ndim; ++i)
      if (d[i] != o.d[i]) return false;
    return true;
  }
  std::string str() const {
    std::string s = "(";
    for (int i = 0; i < ndim; ++i) s += (i ? "," : "") + std::to_string(d[i]);
    return s + ")";
  }
};

struct Tensor {
  void* data = nullptr;
  Shape shape;
  DType dtype = DType::F32;
  Device device = Device::CPU;

  int64_t numel() const { return shape.numel(); }
  int64_t dim(int i) const { return shape[i]; }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool defined() const { return data != nullptr; }

  // Host access: only for tensors in host memory (Device::CPU). Device data reaches the host
  // through the copy ops in runtime/device.h.
  template <class T> T* ptr() const {
    ANYK_CHECK(device == Device::CPU, "host access to a tensor on device " << device_name(device)
                                          << " hint: copy it with to_host() (runtime/device.h)");
    return dev_ptr<T>();
  }
  // The raw pointer in the tensor's own device memory, for handing to a kernel or a
  // communicator only (never dereferenced by host code).
  template <class T> T* dev_ptr() const {
    ANYK_CHECK(dtype == dtype_of<T>(), "tensor is " << dtype_name(dtype) << ", asked for "
                                                    << dtype_name(dtype_of<T>()));
    return static_cast<T*>(data);
  }
  // Same memory, another shape with the same element count.
  Tensor view(Shape s) const {
    ANYK_CHECK(s.numel() == numel(),
               "view " << s.str() << " does not match " << shape.str());
    Tensor t = *this;
    t.shape = s;
    return t;
  }
};

// Calls f(T{}) with T the C++ type of dtype d: ops use it to reach the templated kernels.
// Floating compute types only (f32, f64).
template <class F> decltype(auto) dispatch(DType d, F&& f) {
  ANYK_CHECK(d == DType::F32 || d == DType::F64, "no compute kernels for dtype " << dtype_name(d));
  if (d == DType::F32) return f(float{});
  return f(double{});
}

}  // namespace anyk
