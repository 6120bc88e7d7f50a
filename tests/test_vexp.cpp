// vexp8 / vexp_inplace (kernels/cpu/vexp.h) against std::exp, bit for bit: every float with
// 2^-10 <= |x| <= 104 or 89 (the range where expf is neither 1, 0 nor inf, plus the edges), every
// 97th float closer to 0, and the specials. The training kernels replaced their std::exp loops by
// it on the promise that nothing moves.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cpu/vexp.h"

namespace {

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }
float from_bits(uint32_t u) { return std::bit_cast<float>(u); }

// Runs vexp_inplace over the floats with bit patterns lo, lo + stride, ... <= hi, 4096 at a time,
// and counts those whose result differs from std::exp in any bit (nan: any nan matches).
int64_t mismatches(uint32_t lo, uint32_t hi, uint32_t stride, float* first_bad) {
  std::vector<float> buf(4096), ref(4096);
  int64_t bad = 0;
  for (uint64_t u0 = lo; u0 <= hi; u0 += buf.size() * stride) {
    const int n = int(std::min<uint64_t>(buf.size(), (uint64_t(hi) - u0) / stride + 1));
    for (int i = 0; i < n; ++i) {
      buf[size_t(i)] = from_bits(uint32_t(u0 + uint64_t(i) * stride));
      ref[size_t(i)] = std::exp(buf[size_t(i)]);
    }
    const std::vector<float> in(buf.begin(), buf.begin() + n);
    anyk::cpu::vexp_inplace(buf.data(), n);
    for (int i = 0; i < n; ++i) {
      const float r = ref[size_t(i)], g = buf[size_t(i)];
      if (bits(r) != bits(g) && !(std::isnan(r) && std::isnan(g))) {
        if (!bad) *first_bad = in[size_t(i)];
        ++bad;
      }
    }
  }
  return bad;
}

}  // namespace

TEST_CASE("vexp: bit-identical to std::exp on the floats in [-104, 89]") {
  float first = 0;
  // Bit patterns ascend with |x|: positives up to 89, then negatives down to -104; every float
  // from 2^-10 on, every 97th below.
  const uint32_t small = bits(0x1p-10f);
  for (uint32_t sign : {0u, 0x80000000u}) {
    const uint32_t top = sign ? bits(-104.0f) : bits(89.0f);
    CAPTURE(sign);
    const int64_t tiny = mismatches(sign, sign | small, 97, &first);
    CAPTURE(first);
    CHECK(tiny == 0);
    const int64_t all = mismatches(sign | small, top, 1, &first);
    CAPTURE(first);
    CHECK(all == 0);
  }
}

TEST_CASE("vexp: specials and lengths that are not a multiple of 8") {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {0.0f, -0.0f, 1.0f, -1.0f, inf, -inf, std::nanf(""), 88.5f, 100.0f, -103.5f,
                          -110.0f, 1e-30f, -1e-30f, 88.72f, -87.3f, 3.5f, -20.25f};
  for (size_t n = 0; n <= x.size(); ++n) {
    std::vector<float> y(x.begin(), x.begin() + long(n));
    anyk::cpu::vexp_inplace(y.data(), int64_t(n));
    for (size_t i = 0; i < n; ++i) {
      CAPTURE(n);
      CAPTURE(x[i]);
      const float r = std::exp(x[i]);
      CHECK((bits(y[i]) == bits(r) || (std::isnan(r) && std::isnan(y[i]))));
    }
  }
}
