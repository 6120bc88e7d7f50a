// The HDF5-aware mutation shared by the checkpoint and weights harnesses' custom mutators: mostly
// in place, so the file's internal addresses stay valid, optionally re-checksummed (h5_fix.h).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "h5_fix.h"

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace anyk::fuzz {

// ANYK_FUZZ_FIX_H5_CHECKSUMS=1: recompute HDF5's metadata checksums after each mutation.
inline bool fix_checksums_enabled() {
  static const bool fix = [] {
    const char* e = std::getenv("ANYK_FUZZ_FIX_H5_CHECKSUMS");
    return e && *e == '1';
  }();
  return fix;
}

// Mutates the HDF5 file p (growing it to at most cap bytes). One time in 16 (or when p is
// empty) the whole file goes through LLVMFuzzerMutate and may change length; otherwise a window
// of 1..16 bytes changes in place, half of the time inside an object header ("OHDR": attributes,
// shapes, types, links) or a fractal-heap block ("FHDB": densely stored attributes and links).
// Returns false when the file cannot be mutated within cap.
inline bool mutate_h5(std::vector<uint8_t>& p, size_t cap, std::minstd_rand& rng) {
  const bool fix = fix_checksums_enabled();
  std::vector<FhdbBlock> heap_blocks;  // learnt while the checksums still hold
  if (fix) find_fhdb_blocks(p.data(), p.size(), heap_blocks);
  const unsigned mode = rng() % 16;
  if (p.empty() || mode == 0) {
    const size_t old = p.size();
    if (cap < old || cap == 0) return false;
    p.resize(cap);
    p.resize(LLVMFuzzerMutate(p.data(), old, cap));
  } else {
    size_t lo = 0, hi = p.size();
    if (mode < 9) {
      // A 4-byte load per position, not memcmp: the harness is compiled with -fsanitize=fuzzer,
      // so every memcmp call here went through ASan's interceptor and libFuzzer's comparison hook
      // (about a tenth of fuzz_checkpoint's CPU time, and "OHDR"/"FHDB" fed into its tables).
      uint32_t ohdr, fhdb;
      std::memcpy(&ohdr, "OHDR", 4);
      std::memcpy(&fhdb, "FHDB", 4);
      std::vector<size_t> headers;
      for (size_t i = 0; i + 4 <= p.size(); ++i) {
        uint32_t v;
        std::memcpy(&v, p.data() + i, 4);
        if (v == ohdr || v == fhdb) headers.push_back(i);
      }
      if (!headers.empty()) {
        lo = headers[rng() % headers.size()];
        hi = std::min(p.size(), lo + 512);
      }
    }
    const size_t w = std::min<size_t>(1 + rng() % 16, hi - lo);
    const size_t at = lo + rng() % (hi - lo - w + 1);
    uint8_t buf[16];
    std::memcpy(buf, p.data() + at, w);
    const size_t got = LLVMFuzzerMutate(buf, w, w);
    std::memcpy(p.data() + at, buf, got);
  }
  // Off by default: with re-checksummed metadata libhdf5 1.10.8 itself crashes within a few
  // hundred inputs (docs/fuzzing.md), so the default campaign is corruption HDF5 can detect.
  if (fix && rng() % 16 != 0) {  // now and then leave them broken
    fix_h5_checksums(p.data(), p.size());
    fix_fhdb_blocks(p.data(), p.size(), heap_blocks);
  }
  return true;
}

}  // namespace anyk::fuzz
