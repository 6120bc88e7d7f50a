// The CUDA backend's kernel tables: each .cu file fills its part; the result is checked for
// entries left null (a missing kernel fails at init, not at its first call).
#include <cstddef>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace anyk::cuda {

namespace {

// Kernels<T> is a struct of function pointers only; walk it as an array of them.
template <class T> void check_complete(const Kernels<T>& k) {
  static_assert(std::is_standard_layout_v<Kernels<T>>);
  using Fn = void (*)();
  static_assert(sizeof(Kernels<T>) % sizeof(Fn) == 0, "Kernels<T> holds only function pointers");
  constexpr size_t count = sizeof(Kernels<T>) / sizeof(Fn);
  constexpr size_t to_bf16 = offsetof(Kernels<T>, to_bf16) / sizeof(Fn);
  constexpr size_t from_bf16 = offsetof(Kernels<T>, from_bf16) / sizeof(Fn);
  for (size_t i = 0; i < count; ++i) {
    Fn f;
    std::memcpy(&f, reinterpret_cast<const char*>(&k) + i * sizeof(Fn), sizeof(Fn));
    // The bf16 conversions exist for float only, as in the CPU table.
    if (!std::is_same_v<T, float> && (i == to_bf16 || i == from_bf16)) continue;
    ANYK_CHECK(f != nullptr, "CUDA " << (std::is_same_v<T, float> ? "f32" : "f64") << " kernel table: entry "
                                     << i << " of " << count
                                     << " is null hint: a fill_* function in kernels/cuda misses it");
  }
}

template <class T> Kernels<T> make_table() {
  Kernels<T> k{};
  fill_elementwise<T>(k);
  fill_dense<T>(k);
  fill_moe<T>(k);
  fill_router<T>(k);
  check_complete(k);
  return k;
}

}  // namespace

template <class T> const Kernels<T>& kernel_table() {
  static const Kernels<T> table = make_table<T>();
  return table;
}

template const Kernels<float>& kernel_table<float>();
template const Kernels<double>& kernel_table<double>();

}  // namespace anyk::cuda
