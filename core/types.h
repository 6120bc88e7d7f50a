// The bottom of the layering: element types and devices, known to every folder (kernels/ too,
// which includes nothing above core/). Tensors, arenas and the copy ops are in runtime/.
#pragma once
#include <cstddef>
#include <cstdint>

namespace anyk {

enum class DType : uint8_t { F32, F64, I32, BF16 };
// CPU: host memory. CUDA: a GPU. Checked: the CPU kernels over memory the host must not read
// directly (tests prove the device seam with it).
enum class Device : uint8_t { CPU, CUDA, Checked };

inline size_t dtype_size(DType d) {
  switch (d) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::I32: return 4;
    case DType::BF16: return 2;
  }
  return 0;
}
inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::I32: return "i32";
    case DType::BF16: return "bf16";
  }
  return "?";
}
inline const char* device_name(Device d) {
  switch (d) {
    case Device::CPU: return "cpu";
    case Device::CUDA: return "cuda";
    case Device::Checked: return "checked";
  }
  return "?";
}

// bf16 storage: the upper 16 bits of an f32 (convert through the to_bf16 / from_bf16 kernels).
struct bf16 {
  uint16_t bits;
};

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<bf16>() { return DType::BF16; }

}  // namespace anyk
