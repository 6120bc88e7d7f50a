// For the checkpoint harness's custom mutator: HDF5 >= 1.8 metadata blocks (superblock v2/v3,
// object headers "OHDR" and their continuation chunks "OCHK") end in a Jenkins lookup3 checksum,
// so a random byte change in an attribute, a dataspace or a datatype is refused by HDF5 before
// anyk sees it. fix_h5_checksums() recomputes those checksums after a mutation so mutations of
// the metadata reach anyk's readers. Written from the HDF5 file format specification
// (superblock version 2, object header version 2) and Bob Jenkins' lookup3 description.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace anyk::fuzz {

inline uint32_t rotl32(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

// lookup3's hashlittle over bytes, as HDF5's H5_checksum_metadata (initval 0).
inline uint32_t lookup3(const uint8_t* k, size_t length, uint32_t initval = 0) {
  uint32_t a, b, c;
  a = b = c = 0xdeadbeefu + uint32_t(length) + initval;
  auto word = [](const uint8_t* p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
  };
  while (length > 12) {
    a += word(k);
    b += word(k + 4);
    c += word(k + 8);
    a -= c; a ^= rotl32(c, 4);  c += b;
    b -= a; b ^= rotl32(a, 6);  a += c;
    c -= b; c ^= rotl32(b, 8);  b += a;
    a -= c; a ^= rotl32(c, 16); c += b;
    b -= a; b ^= rotl32(a, 19); a += c;
    c -= b; c ^= rotl32(b, 4);  b += a;
    length -= 12;
    k += 12;
  }
  if (length == 0) return c;
  uint8_t tail[12] = {};
  std::memcpy(tail, k, length);  // the missing bytes add zero, as the switch in lookup3 does
  a += word(tail);
  b += word(tail + 4);
  c += word(tail + 8);
  c ^= b; c -= rotl32(b, 14);
  a ^= c; a -= rotl32(c, 11);
  b ^= a; b -= rotl32(a, 25);
  c ^= b; c -= rotl32(b, 16);
  a ^= c; a -= rotl32(c, 4);
  b ^= a; b -= rotl32(a, 14);
  c ^= b; c -= rotl32(b, 24);
  return c;
}

inline uint64_t read_le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

inline void put_checksum(uint8_t* f, size_t size, size_t start, size_t len) {
  if (start > size || len > size - start || size - start - len < 4) return;
  const uint32_t c = lookup3(f + start, len);
  for (int i = 0; i < 4; ++i) f[start + len + i] = uint8_t(c >> (8 * i));
}

// Recomputes the checksums of the superblock (v2/v3 at offset 0) and of every "OHDR" block and
// every "OCHK" block an object header's continuation message points at. Blocks whose length
// fields are themselves corrupt are left as they are (HDF5 then refuses them, which is fine).
inline void fix_h5_checksums(uint8_t* f, size_t size) {
  static const uint8_t kSig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  int offs = 8;
  if (size >= 12 && std::memcmp(f, kSig, 8) == 0 && (f[8] == 2 || f[8] == 3)) {
    offs = f[9];
    if (offs == 2 || offs == 4 || offs == 8) put_checksum(f, size, 0, 12 + 4 * size_t(offs));
    else offs = 8;
  }
  for (size_t at = 0; at + 4 <= size; ++at) {
    if (std::memcmp(f + at, "OHDR", 4) != 0) continue;
    size_t p = at + 4;
    if (p + 2 > size || f[p] != 2) continue;
    const uint8_t flags = f[p + 1];
    p += 2;
    if (flags & 0x20) p += 16;
    if (flags & 0x10) p += 4;
    const int width = 1 << (flags & 3);
    if (p + size_t(width) > size) continue;
    const uint64_t chunk = read_le(f + p, width);
    p += size_t(width);
    if (chunk > size || p + chunk + 4 > size) continue;
    const size_t end = p + size_t(chunk);
    // Continuation messages (type 0x10: address, length) point at OCHK blocks, which may hold
    // further continuation messages: walk them all (a bounded number, against cycles).
    struct Span { size_t begin, end; };
    Span work[64];
    int nwork = 0, visited = 0;
    work[nwork++] = {p, end};
    while (nwork > 0 && visited++ < 256) {
      const Span s = work[--nwork];
      for (size_t m = s.begin; m + 4 <= s.end;) {
        const uint8_t type = f[m];
        const size_t msize = size_t(read_le(f + m + 1, 2));
        m += 4 + ((flags & 0x04) ? 2 : 0);
        if (m + msize > s.end) break;
        if (type == 0x10 && msize >= 16 && offs == 8) {
          const uint64_t addr = read_le(f + m, 8), len = read_le(f + m + 8, 8);
          if (addr < size && len >= 8 && len <= size - addr && std::memcmp(f + addr, "OCHK", 4) == 0) {
            put_checksum(f, size, size_t(addr), size_t(len) - 4);
            if (nwork < 64) work[nwork++] = {size_t(addr) + 4, size_t(addr + len) - 4};
          }
        }
        m += msize;
      }
    }
    put_checksum(f, size, at, end - at);
  }
}

// Fractal-heap direct blocks ("FHDB": dense attribute storage, e.g. the root group's ~30 model
// attributes, and dense link storage) carry a checksum over the whole block with the checksum
// field zeroed; where that field sits and how long the block is depend on the heap's header. They
// are learnt from a file whose checksums are still valid: find_fhdb_blocks() tries each layout
// and keeps the one whose checksum matches, fix_fhdb_blocks() recomputes them after a mutation.
struct FhdbBlock {
  size_t at, field, len;  // block start, checksum field offset within it, block length
};

inline uint32_t fhdb_checksum(const uint8_t* f, const FhdbBlock& b) {
  uint8_t saved[4];
  std::memcpy(saved, f + b.at + b.field, 4);
  std::memset(const_cast<uint8_t*>(f) + b.at + b.field, 0, 4);
  const uint32_t c = lookup3(f + b.at, b.len);
  std::memcpy(const_cast<uint8_t*>(f) + b.at + b.field, saved, 4);
  return c;
}

template <class Out> void find_fhdb_blocks(const uint8_t* f, size_t size, Out& out) {
  for (size_t at = 0; at + 4 <= size; ++at) {
    if (std::memcmp(f + at, "FHDB", 4) != 0) continue;
    bool found = false;
    // signature 4, version 1, heap header address 8, block offset 1..8 bytes, then the checksum
    for (size_t k = 1; k <= 8 && !found; ++k) {
      const size_t field = 13 + k;
      for (size_t len = 64; len <= (size_t(1) << 20) && at + len <= size && !found; len *= 2) {
        FhdbBlock b{at, field, len};
        if (fhdb_checksum(f, b) == uint32_t(read_le(f + at + field, 4))) {
          out.push_back(b);
          found = true;
        }
      }
    }
  }
}

template <class Blocks> void fix_fhdb_blocks(uint8_t* f, size_t size, const Blocks& blocks) {
  for (const FhdbBlock& b : blocks) {
    if (b.at + b.len > size) continue;
    const uint32_t c = fhdb_checksum(f, b);
    for (int i = 0; i < 4; ++i) f[b.at + b.field + i] = uint8_t(c >> (8 * i));
  }
}

}  // namespace anyk::fuzz
