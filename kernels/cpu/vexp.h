// exp of 8 floats at once, bit for bit what glibc's expf returns on an x86-64 CPU with FMA (the
// __expf_fma variant the project's x86-64-v3 builds call), so that the kernels that call it give
// the same results as the scalar std::exp loops they replace (the K-sweep and every loss stay
// bit-identical). The algorithm is glibc's (sysdeps/ieee754/flt-32/e_expf.c, since 2.28): x in
// double, k = round(x * 32/ln2), 2^(k/32) from a 32-entry table, a cubic in the remainder; with the
// same constants, and multiply-adds fused exactly where the FMA build fuses them (read off its
// disassembly). Lanes outside the fast path (|x| >= 88, inf, nan) call std::exp itself.
// tests/test_vexp.cpp compares it with std::exp for every float in [-104, 89] and the specials.
//
// vexp_inplace(a, n) replaces a[0..n) by exp(a[i]); without AVX2+FMA it is the scalar loop.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ANYK_VEXP 1
#endif

namespace anyk::cpu {

#ifdef ANYK_VEXP
namespace vexp_detail {
// glibc's __exp2f_data: 2^(i/32) with (i << 47) subtracted from the bits, then the scaled
// constants (N = 32).
alignas(64) inline constexpr uint64_t kTab[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540};
constexpr uint64_t kInvLn2N = 0x40471547652b82fe;  // 32 / ln 2
constexpr uint64_t kShift = 0x4338000000000000;    // 0x1.8p52
constexpr uint64_t kC0 = 0x3ebc6af84b912394, kC1 = 0x3f2ebfce50fac4f3, kC2 = 0x3f962e42ff0c52d6;

inline __m256d bits_pd(uint64_t b) { return _mm256_castsi256_pd(_mm256_set1_epi64x(int64_t(b))); }

// exp of 4 doubles that came from floats on the fast path, rounded back to float.
inline __m128 exp4(__m256d xd) {
  const __m256d inv = bits_pd(kInvLn2N), shift = bits_pd(kShift);
  __m256d kd = _mm256_fmadd_pd(inv, xd, shift);  // z + shift, z = x * 32/ln2 (fused, as glibc)
  const __m256i ki = _mm256_castpd_si256(kd);
  kd = _mm256_sub_pd(kd, shift);
  const __m256d r = _mm256_fmsub_pd(inv, xd, kd);  // z - kd, fused
  const __m256i idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
  __m256i t = _mm256_i64gather_epi64(reinterpret_cast<const long long*>(kTab), idx, 8);
  t = _mm256_add_epi64(t, _mm256_slli_epi64(ki, 47));
  const __m256d s = _mm256_castsi256_pd(t);
  const __m256d z = _mm256_fmadd_pd(bits_pd(kC0), r, bits_pd(kC1));
  const __m256d r2 = _mm256_mul_pd(r, r);
  __m256d y = _mm256_fmadd_pd(bits_pd(kC2), r, _mm256_set1_pd(1.0));
  y = _mm256_fmadd_pd(z, r2, y);
  y = _mm256_mul_pd(y, s);
  return _mm256_cvtpd_ps(y);
}
}  // namespace vexp_detail

// exp of 8 floats.
inline __m256 vexp8(__m256 x) {
  using namespace vexp_detail;
  const __m256i top = _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(x), 20), _mm256_set1_epi32(0x7ff));
  const int special = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(top, _mm256_set1_epi32(0x42a))));
  const __m128 lo = exp4(_mm256_cvtps_pd(_mm256_castps256_ps128(x)));
  const __m128 hi = exp4(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)));
  __m256 y = _mm256_set_m128(hi, lo);
  if (special) {
    alignas(32) float xs[8], ys[8];
    _mm256_store_ps(xs, x);
    _mm256_store_ps(ys, y);
    for (int i = 0; i < 8; ++i)
      if (special >> i & 1) ys[i] = std::exp(xs[i]);
    y = _mm256_load_ps(ys);
  }
  return y;
}
#endif

// a[i] = exp(a[i]) for i in [0, n).
inline void vexp_inplace(float* a, int64_t n) {
  int64_t i = 0;
#ifdef ANYK_VEXP
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(a + i, vexp8(_mm256_loadu_ps(a + i)));
#endif
  for (; i < n; ++i) a[i] = std::exp(a[i]);
}

}  // namespace anyk::cpu
