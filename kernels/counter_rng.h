// The pure counter-based hash under runtime/rng.h: every draw is a function of a key, so a kernel
// (CPU now, CUDA later) and the host compute the same numbers. splitmix64's finaliser per word.
// Self-contained: kernels/ includes nothing outside kernels/.
#pragma once
#include <cstdint>

// Host and device (nvcc) alike: the CUDA router kernels draw the same numbers as the CPU ones.
#if defined(__CUDACC__)
#define ANYK_HD __host__ __device__
#else
#define ANYK_HD
#endif

namespace anyk {

ANYK_HD inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Hash of a key made of up to five 64-bit words.
ANYK_HD inline uint64_t hash_key(uint64_t a, uint64_t b = 0, uint64_t c = 0, uint64_t d = 0, uint64_t e = 0) {
  uint64_t h = mix64(a ^ 0x5851f42d4c957f2dULL);
  h = mix64(h ^ b);
  h = mix64(h ^ c);
  h = mix64(h ^ d);
  return mix64(h ^ e);
}

// Uniform in [0, 1) with 53 random bits.
ANYK_HD inline double uniform01(uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }

// Uniform integer in [0, n) (n > 0), from a hash; bias is below 2^-40 for n < 2^24.
ANYK_HD inline uint64_t uniform_int(uint64_t h, uint64_t n) {
  return static_cast<uint64_t>(uniform01(h) * static_cast<double>(n)) % n;
}

}  // namespace anyk
