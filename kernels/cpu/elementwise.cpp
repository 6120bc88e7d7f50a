// CPU element-wise kernels, reductions, the AdamW update and the bf16 conversions. Reductions
// sum in a fixed order so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

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

template <class T>
void adamw_update(T* p, T* m, T* v, const T* g, int64_t n, double b1, double b2, double eps, double shrink,
                  double step_size, double inv_sqrt_bc2) {
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t i = 0; i < n; ++i) {
    const double gi = g[i];
    const double mi = b1 * m[i] + (1.0 - b1) * gi;
    const double vi = b2 * v[i] + (1.0 - b2) * gi * gi;
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    const double denom = std::sqrt(vi) * inv_sqrt_bc2 + eps;
    p[i] = static_cast<T>(p[i] * shrink - step_size * mi / denom);
  }
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
