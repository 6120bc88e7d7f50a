// CPU element-wise kernels, reductions, the AdamW update and the bf16 conversions. Reductions
// sum in a fixed order so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "kernels/cpu/eigen_maps.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/parallel.h"

namespace anyk::cpu {

template <class T> void fill(T* out, T v, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t i = 0; i < n; ++i) out[i] = v;
}

template <class T> void copy(T* dst, const T* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, size_t(n) * sizeof(T));
}

template <class T> void accumulate(T* y, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template <class T> void fill_div(T* out, const T* s, double div, int64_t n) {
  const T g = s[0] / T(div);
  for (int64_t i = 0; i < n; ++i) out[i] = g;
}

template <class T> void sum_div(T* out, const T* x, int64_t n, double div) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  out[0] = T(s / div);
}

template <class T> void sumsq_accumulate(double* acc, const T* x, int64_t n) {
  // Fixed chunks summed in order: an OpenMP reduction's order would depend on the threads.
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);  // host scratch of the CPU backend
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t c = 0; c < chunks; ++c) {
    double a = 0.0;
    for (int64_t i = c * kChunk, end = std::min(n, (c + 1) * kChunk); i < end; ++i)
      a += static_cast<double>(x[i]) * x[i];
    part[c] = a;
  }
  double sum = *acc;
  for (double p : part) sum += p;
  *acc = sum;
}

int64_t first_bad_id(const int* ids, int64_t n, int V) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= V) return i;
  return -1;
}

#if defined(__AVX2__) && defined(__FMA__)
// Elements [i, i1) of the float AdamW update, 4 at a time in double: the scalar loop's operations
// with its multiply-adds fused as GCC fuses them there (read off its disassembly): mi =
// fma(m, b1, (1-b1)*g), vi = fma(v, b2, ((1-b2)*g)*g), denom = fma(sqrt(vi), inv_sqrt_bc2, eps),
// p = fma(p, shrink, -(step_size*mi)/denom). Returns where it stopped (a multiple of 4 from i).
inline int64_t adamw_update_x4(float* p, float* m, float* v, const float* g, int64_t i, int64_t i1, double b1,
                               double b2, double eps, double shrink, double step_size, double inv_sqrt_bc2) {
  const __m256d vb1 = _mm256_set1_pd(b1), vb2 = _mm256_set1_pd(b2), c1 = _mm256_set1_pd(1.0 - b1),
                c2 = _mm256_set1_pd(1.0 - b2), veps = _mm256_set1_pd(eps), vsh = _mm256_set1_pd(shrink),
                vst = _mm256_set1_pd(step_size), vbc = _mm256_set1_pd(inv_sqrt_bc2);
  for (; i + 4 <= i1; i += 4) {
    const __m256d gi = _mm256_cvtps_pd(_mm_loadu_ps(g + i));
    const __m256d mi = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(m + i)), vb1, _mm256_mul_pd(gi, c1));
    const __m256d vi =
        _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(v + i)), vb2, _mm256_mul_pd(_mm256_mul_pd(gi, c2), gi));
    _mm_storeu_ps(m + i, _mm256_cvtpd_ps(mi));
    _mm_storeu_ps(v + i, _mm256_cvtpd_ps(vi));
    const __m256d denom = _mm256_fmadd_pd(_mm256_sqrt_pd(vi), vbc, veps);
    const __m256d q = _mm256_div_pd(_mm256_mul_pd(vst, mi), denom);
    _mm_storeu_ps(p + i, _mm256_cvtpd_ps(_mm256_fmsub_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + i)), vsh, q)));
  }
  return i;
}
#endif

// Element i of the AdamW update in double (the reference the 4-wide path reproduces bit for bit).
template <class T>
inline void adamw_update_one(T* p, T* m, T* v, const T* g, int64_t i, double b1, double b2, double eps,
                             double shrink, double step_size, double inv_sqrt_bc2) {
  const double gi = g[i];
  const double mi = b1 * m[i] + (1.0 - b1) * gi;
  const double vi = b2 * v[i] + (1.0 - b2) * gi * gi;
  m[i] = static_cast<T>(mi);
  v[i] = static_cast<T>(vi);
  const double denom = std::sqrt(vi) * inv_sqrt_bc2 + eps;
  p[i] = static_cast<T>(p[i] * shrink - step_size * mi / denom);
}

template <class T>
void adamw_update(T* p, T* m, T* v, const T* g, int64_t n, double b1, double b2, double eps, double shrink,
                  double step_size, double inv_sqrt_bc2) {
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    constexpr int64_t kBlock = 4096;
    const int64_t nb = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t i1 = std::min(n, (b + 1) * kBlock);
      for (int64_t i = adamw_update_x4(p, m, v, g, b * kBlock, i1, b1, b2, eps, shrink, step_size, inv_sqrt_bc2);
           i < i1; ++i)
        adamw_update_one(p, m, v, g, i, b1, b2, eps, shrink, step_size, inv_sqrt_bc2);
    }
    return;
  }
#endif
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t i = 0; i < n; ++i) adamw_update_one(p, m, v, g, i, b1, b2, eps, shrink, step_size, inv_sqrt_bc2);
}

void to_bf16(uint16_t* out, const float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, &x[i], 4);
    if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu)) {
      out[i] = uint16_t((b >> 16) | 0x0040u);  // NaN: keep sign and top payload, force quiet
      continue;
    }
    b += 0x7fffu + ((b >> 16) & 1u);  // round to nearest, ties to even (overflow gives inf)
    out[i] = uint16_t(b >> 16);
  }
}

void from_bf16(float* out, const uint16_t* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b = uint32_t(x[i]) << 16;
    std::memcpy(&out[i], &b, 4);
  }
}

ANYK_INSTANTIATE(fill)
ANYK_INSTANTIATE(copy)
ANYK_INSTANTIATE(accumulate)
ANYK_INSTANTIATE(fill_div)
ANYK_INSTANTIATE(sum_div)
ANYK_INSTANTIATE(sumsq_accumulate)
ANYK_INSTANTIATE(adamw_update)

}  // namespace anyk::cpu
