// The step arena: alignment, reset, growth, high-water mark, and that memory never moves.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>

#include "runtime/arena.h"

using namespace anyk;

TEST_CASE("arena: alignment of every allocation") {
  Arena a(4096);
  for (size_t align : {1, 2, 8, 16, 64, 256, 4096}) {
    a.alloc(3, 1);  // misalign the cursor first
    void* p = a.alloc(10, align);
    CHECK(reinterpret_cast<uintptr_t>(p) % align == 0);
  }
  CHECK_THROWS_AS(a.alloc(8, 3), Error);  // not a power of two
}

TEST_CASE("arena: reset reuses the same memory and keeps the chunks") {
  Arena a(1 << 16);
  void* p1 = a.alloc(1000);
  void* p2 = a.alloc(2000);
  size_t cap = a.capacity();
  a.reset();
  CHECK(a.used() == 0);
  CHECK(a.alloc(1000) == p1);
  CHECK(a.alloc(2000) == p2);
  CHECK(a.capacity() == cap);
}

TEST_CASE("arena: growth adds chunks, never moves memory, oversize requests get their own chunk") {
  Arena a(4096);
  auto* first = static_cast<char*>(a.alloc(4000));
  std::memset(first, 7, 4000);
  auto* second = static_cast<char*>(a.alloc(4000));  // does not fit: new chunk
  CHECK(a.num_chunks() == 2);
  CHECK(first[3999] == 7);  // earlier memory untouched
  void* big = a.alloc(100000);  // larger than a chunk
  CHECK(big != nullptr);
  CHECK(a.num_chunks() == 3);
  CHECK(a.capacity() >= 4096 + 4096 + 100000);
  std::memset(second, 1, 4000);
  std::memset(big, 2, 100000);
  // After reset the same sequence fits in the existing chunks: no new chunk.
  a.reset();
  a.alloc(4000);
  a.alloc(4000);
  a.alloc(100000);
  CHECK(a.num_chunks() == 3);
}

TEST_CASE("arena: high-water mark is the largest step, used counts the bytes of this step") {
  Arena a(1 << 20);
  a.alloc(1000, 64);
  a.alloc(500, 64);
  size_t step1 = a.used();
  CHECK(step1 >= 1500);
  CHECK(step1 < 1500 + 128);  // at most the alignment padding
  a.reset();
  a.alloc(100, 64);
  CHECK(a.used() < step1);
  CHECK(a.high_water() == step1);
  a.alloc(10000, 64);
  CHECK(a.high_water() == a.used());
  CHECK(a.high_water() > step1);
}

TEST_CASE("arena: tensors are zeroed on request") {
  Arena a(4096);
  Tensor t = a.tensor({3, 5}, DType::F64, true);
  CHECK(t.numel() == 15);
  CHECK(t.bytes() == 120);
  for (int i = 0; i < 15; ++i) CHECK(t.ptr<double>()[i] == 0.0);
  CHECK_THROWS_AS(t.ptr<float>(), Error);  // wrong dtype is refused
}
