// How an op reaches its kernels: the (device, dtype) table of a tensor and the device's execution
// context, with the scalar type as a tag. One table lookup per kernel call.
#pragma once
#include "kernels/kernels.h"
#include "runtime/tensor.h"

namespace anyk {

// Calls f(kernels, ctx, T{}) with the table of t's device and dtype (f32 or f64).
template <class F> decltype(auto) with_kernels(const Tensor& t, F&& f) {
  return dispatch(t.dtype, [&](auto tag) {
    using T = decltype(tag);
    return f(kernels<T>(t.device), exec_ctx(t.device), tag);
  });
}

// The raw device pointer of an optional tensor (null when undefined), for kernel arguments.
template <class T> T* dev_or_null(const Tensor& t) { return t.defined() ? t.dev_ptr<T>() : nullptr; }

}  // namespace anyk
