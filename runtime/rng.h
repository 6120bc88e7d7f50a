// Counter-based random numbers: every draw is a pure function of a key (seed, stream, counters),
// so any process can recompute any step's K, any window of data or any parameter's initial value
// with no state to carry or communicate. The mixer is splitmix64's finaliser, applied per word.
#pragma once
#include <cmath>
#include <cstdint>
#include <string_view>

namespace anyk {

inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Hash of a key made of up to five 64-bit words.
inline uint64_t hash_key(uint64_t a, uint64_t b = 0, uint64_t c = 0, uint64_t d = 0, uint64_t e = 0) {
  uint64_t h = mix64(a ^ 0x5851f42d4c957f2dULL);
  h = mix64(h ^ b);
  h = mix64(h ^ c);
  h = mix64(h ^ d);
  return mix64(h ^ e);
}

// Stable 64-bit hash of a name (FNV-1a), for streams keyed by parameter names.
inline uint64_t hash_name(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ULL;
  return h;
}

// Uniform in [0, 1) with 53 random bits.
inline double uniform01(uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }

// Uniform integer in [0, n) (n > 0), from a hash; bias is below 2^-40 for n < 2^24.
inline uint64_t uniform_int(uint64_t h, uint64_t n) {
  return static_cast<uint64_t>(uniform01(h) * static_cast<double>(n)) % n;
}

// Standard normal from one key (Box-Muller on two derived uniforms).
inline double normal_from(uint64_t h) {
  double u1 = uniform01(mix64(h ^ 0x1234567ULL));
  double u2 = uniform01(mix64(h ^ 0x89abcdefULL));
  if (u1 < 1e-300) u1 = 1e-300;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// A small sequential generator for tests and tools that want a stream, not a key.
struct CounterRng {
  uint64_t seed, stream, counter = 0;
  CounterRng(uint64_t s, uint64_t st = 0) : seed(s), stream(st) {}
  uint64_t next() { return hash_key(seed, stream, counter++); }
  double uniform() { return uniform01(next()); }
  double normal() { return normal_from(next()); }
};

}  // namespace anyk
