// Counter-based random numbers: every draw is a pure function of a key (seed, stream, counters),
// so any process can recompute any step's K, any window of data or any parameter's initial value
// with no state to carry or communicate. The mixer is splitmix64's finaliser, applied per word.
#pragma once
#include <cmath>
#include <cstdint>
#include <string_view>

#include "kernels/counter_rng.h"  // mix64, hash_key, uniform01, uniform_int

namespace anyk {

// Stable 64-bit hash of a name (FNV-1a), for streams keyed by parameter names.
inline uint64_t hash_name(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ULL;
  return h;
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
