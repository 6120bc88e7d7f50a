// Chunked bump allocator; see arena.h.
#include "runtime/arena.h"

#include "runtime/device.h"

#include <cstdlib>
#include <new>

namespace anyk {

namespace {
constexpr size_t kChunkAlign = 4096;
size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
}  // namespace

Arena::Arena(size_t chunk_bytes, Device device)
    : chunk_bytes_(round_up(chunk_bytes ? chunk_bytes : 1, kChunkAlign)), device_(device) {}

Arena::~Arena() {
  for (auto& c : chunks_) allocator(device_).free(c.base, c.size);
}

void* Arena::alloc(size_t bytes, size_t align) {
  ANYK_CHECK(align && (align & (align - 1)) == 0 && align <= kChunkAlign,
             "arena alignment must be a power of two <= 4096, got " << align);
  if (bytes == 0) bytes = 1;
  // Try the current chunk, then later (already allocated) chunks, then grow.
  while (cur_ < chunks_.size()) {
    size_t start = round_up(offset_, align);
    if (start + bytes <= chunks_[cur_].size) {
      used_ += (start - offset_) + bytes;
      offset_ = start + bytes;
      if (used_ > high_water_) high_water_ = used_;
      return chunks_[cur_].base + start;
    }
    used_ += chunks_[cur_].size - offset_;  // the tail of a chunk we skip counts as used
    ++cur_;
    offset_ = 0;
  }
  size_t size = round_up(bytes > chunk_bytes_ ? bytes : chunk_bytes_, kChunkAlign);
  std::byte* base = nullptr;
  try {
    base = static_cast<std::byte*>(allocator(device_).alloc(size, kChunkAlign));
  } catch (const std::bad_alloc&) {
  }
  ANYK_CHECK(base, "out of memory: the activation arena could not grow by " << (size >> 20) << " MiB (it holds "
                                                                           << (capacity() >> 20)
                                                                           << " MiB) hint: lower --batch or --seq-len");
  chunks_.push_back({base, size});
  cur_ = chunks_.size() - 1;
  offset_ = bytes;
  used_ += bytes;
  if (used_ > high_water_) high_water_ = used_;
  return base;
}

Tensor Arena::tensor(Shape s, DType dt, bool zero) {
  Tensor t;
  t.shape = s;
  t.dtype = dt;
  t.device = device_;
  t.data = alloc(t.bytes());
  if (zero && t.bytes()) allocator(device_).zero(t.data, t.bytes());
  return t;
}

void Arena::reset() {
  cur_ = 0;
  offset_ = 0;
  used_ = 0;
}

size_t Arena::capacity() const {
  size_t c = 0;
  for (auto& ch : chunks_) c += ch.size;
  return c;
}

}  // namespace anyk
