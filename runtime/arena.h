// The per-step arena: a chunked bump allocator. Chunks are never moved or freed until the arena
// dies; reset() rewinds the cursor so the next step reuses the same memory. The high-water mark
// tells how much one step needed (it is logged, and varies with K and expert loads). Chunks come
// from the allocator of the arena's device; tensors it hands out carry that device.
#pragma once
#include <cstddef>
#include <cstring>
#include <memory>
#include <vector>

#include "runtime/tensor.h"

namespace anyk {

class Arena {
 public:
  explicit Arena(size_t chunk_bytes = size_t(64) << 20, Device device = Device::CPU);
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  Device device() const { return device_; }
  // Uninitialised memory (of the arena's device), aligned to `align` (a power of two, at most 4096).
  void* alloc(size_t bytes, size_t align = 64);
  template <class T> T* alloc_n(size_t n) {
    return static_cast<T*>(alloc(n * sizeof(T), alignof(T) < 64 ? 64 : alignof(T)));
  }
  Tensor tensor(Shape s, DType dt, bool zero = false);

  void reset();                                  // rewind; keeps every chunk
  // A position to rewind to: everything allocated after mark() is given back by release(m),
  // stack fashion (the tape's scratch for bf16 activation storage uses it per op).
  struct Mark {
    size_t cur, offset, used;
  };
  Mark mark() const { return {cur_, offset_, used_}; }
  void release(const Mark& m) {
    cur_ = m.cur;
    offset_ = m.offset;
    used_ = m.used;
  }
  size_t used() const { return used_; }          // bytes handed out since reset (with padding)
  size_t high_water() const { return high_water_; }
  size_t capacity() const;                       // bytes held in all chunks
  size_t num_chunks() const { return chunks_.size(); }

 private:
  struct Chunk {
    std::byte* base;
    size_t size;
  };
  std::vector<Chunk> chunks_;
  size_t chunk_bytes_;
  Device device_;
  size_t cur_ = 0;      // index of the chunk being filled
  size_t offset_ = 0;   // bytes used in chunks_[cur_]
  size_t used_ = 0;
  size_t high_water_ = 0;
};

}  // namespace anyk
