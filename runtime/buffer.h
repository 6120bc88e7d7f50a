// An owning, 64-byte aligned, zero-initialised heap buffer: the one allocation behind each flat
// parameter region, gradient region and optimizer moment.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace anyk {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes) { resize(bytes); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~AlignedBuffer() { std::free(p_); }

  void resize(size_t bytes) {
    std::free(p_);
    n_ = bytes;
    size_t rounded = (bytes + 63) / 64 * 64;
    p_ = rounded ? std::aligned_alloc(64, rounded) : nullptr;
    if (rounded && !p_) throw std::bad_alloc();
    if (p_) std::memset(p_, 0, rounded);
  }
  void* data() const { return p_; }
  size_t bytes() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace anyk
