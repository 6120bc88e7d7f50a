// CPU kernels of the dense ops: embedding, linear, add/scale, RMSNorm, RoPE, SwiGLU,
// cross-entropy. Backward kernels add into their gradient outputs (see kernels.h).
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cpu/eigen_maps.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/vexp.h"

namespace anyk::cpu {

template <class T> void embedding_forward(T* out, const int* ids, const T* wte, int N, int C) {
#pragma omp parallel for schedule(static) if (int64_t(N) * C >= kRowGrain)
  for (int n = 0; n < N; ++n) {
    const T* src = wte + static_cast<int64_t>(ids[n]) * C;
    T* dst = out + static_cast<int64_t>(n) * C;
    for (int c = 0; c < C; ++c) dst[c] = src[c];
  }
}

template <class T> void embedding_backward(T* dwte, const T* dout, const int* ids, int N, int C) {
  // Rows of dwte repeat across tokens, so parallelise over columns, not tokens.
#pragma omp parallel for schedule(static) if (int64_t(N) * C >= kRowGrain)
  for (int c0 = 0; c0 < C; c0 += 16) {
    int c1 = c0 + 16 < C ? c0 + 16 : C;
    for (int n = 0; n < N; ++n) {
      T* dst = dwte + static_cast<int64_t>(ids[n]) * C;
      const T* src = dout + static_cast<int64_t>(n) * C;
      for (int c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

template <class T> void linear_forward(T* out, const T* x, const T* w, int N, int I, int O) {
  gemm_xwt(out, x, w, N, I, O, false);
}

template <class T>
void linear_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, int N, int I, int O) {
  if (dx) gemm_dyw_acc(dx, dout, w, N, I, O);
  if (dw) gemm_dytx_acc(dw, dout, x, N, I, O);
}

template <class T> void add_forward(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <class T> void add_backward(T* da, T* db, const T* dout, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t i = 0; i < n; ++i) {
    if (da) da[i] += dout[i];
    if (db) db[i] += dout[i];
  }
}

template <class T> void scale_forward(T* out, const T* a, T s, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t i = 0; i < n; ++i) out[i] = s * a[i];
}

template <class T> void scale_backward(T* da, const T* dout, T s, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kElementGrain)
  for (int64_t i = 0; i < n; ++i) da[i] += s * dout[i];
}

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int N, int C, double eps) {
#pragma omp parallel for schedule(static) if (int64_t(N) * C >= kRowGrain)
  for (int n = 0; n < N; ++n) {
    const T* xr = x + static_cast<int64_t>(n) * C;
    T* yr = out + static_cast<int64_t>(n) * C;
    T ss = 0;
    for (int c = 0; c < C; ++c) ss += xr[c] * xr[c];
    T r = T(1) / std::sqrt(ss / T(C) + T(eps));
    rstd[n] = r;
    for (int c = 0; c < C; ++c) yr[c] = xr[c] * r * w[c];
  }
}

template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int N,
                      int C) {
  // dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), with xhat = x * rstd, dxhat = dout * w.
  const bool par = int64_t(N) * C >= kRowGrain;
  if (dx) {
#pragma omp parallel for schedule(static) if (par)
    for (int n = 0; n < N; ++n) {
      const T* xr = x + static_cast<int64_t>(n) * C;
      const T* dy = dout + static_cast<int64_t>(n) * C;
      T* dxr = dx + static_cast<int64_t>(n) * C;
      T r = rstd[n], dot = 0;
      for (int c = 0; c < C; ++c) dot += dy[c] * w[c] * xr[c] * r;
      dot /= T(C);
      for (int c = 0; c < C; ++c) dxr[c] += r * (dy[c] * w[c] - xr[c] * r * dot);
    }
  }
  if (dw) {
    // dw accumulates over rows: parallel over columns.
#pragma omp parallel for schedule(static) if (par)
    for (int c0 = 0; c0 < C; c0 += 16) {
      int c1 = c0 + 16 < C ? c0 + 16 : C;
      for (int n = 0; n < N; ++n) {
        const T* xr = x + static_cast<int64_t>(n) * C;
        const T* dy = dout + static_cast<int64_t>(n) * C;
        for (int c = c0; c < c1; ++c) dw[c] += dy[c] * xr[c] * rstd[n];
      }
    }
  }
}

template <class T> void rope_tables(T* cos, T* sin, int Tn, int D, double theta) {
  const int half = D / 2;
  for (int t = 0; t < Tn; ++t)
    for (int i = 0; i < half; ++i) {
      double ang = t * std::pow(theta, -2.0 * i / D);
      cos[int64_t(t) * half + i] = T(std::cos(ang));
      sin[int64_t(t) * half + i] = T(std::sin(ang));
    }
}

template <class T>
static void rope_apply(T* out, const T* x, const T* cos, const T* sin, int B, int Tn, int NHx, int D,
                       int nrot, T sign, bool accumulate) {
  const int half = D / 2;
  const int64_t row = static_cast<int64_t>(NHx) * D;
#pragma omp parallel for collapse(2) schedule(static) if (int64_t(B) * Tn * row >= kRowGrain)
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < Tn; ++t) {
      const T* xr = x + (static_cast<int64_t>(b) * Tn + t) * row;
      T* yr = out + (static_cast<int64_t>(b) * Tn + t) * row;
      const T* ct = cos + static_cast<int64_t>(t) * half;
      const T* st = sin + static_cast<int64_t>(t) * half;
      for (int h = 0; h < nrot; ++h) {
        const T* x1 = xr + h * D;
        const T* x2 = x1 + half;
        T* y1 = yr + h * D;
        T* y2 = y1 + half;
        for (int i = 0; i < half; ++i) {
          T c = ct[i], s = sign * st[i];
          T a = x1[i] * c - x2[i] * s, bb = x1[i] * s + x2[i] * c;
          if (accumulate) {
            y1[i] += a;
            y2[i] += bb;
          } else {
            y1[i] = a;
            y2[i] = bb;
          }
        }
      }
      for (int64_t j = static_cast<int64_t>(nrot) * D; j < row; ++j)
        yr[j] = accumulate ? yr[j] + xr[j] : xr[j];
    }
  }
}

template <class T>
void rope_forward(T* out, const T* x, const T* cos, const T* sin, int B, int Tn, int NHx, int D, int nrot) {
  rope_apply(out, x, cos, sin, B, Tn, NHx, D, nrot, T(1), false);
}

template <class T>
void rope_backward(T* dx, const T* dout, const T* cos, const T* sin, int B, int Tn, int NHx, int D, int nrot) {
  rope_apply(dx, dout, cos, sin, B, Tn, NHx, D, nrot, T(-1), true);  // the inverse rotation
}

// One row of SwiGLU: y = g / (1 + exp(-g)) * u. The float path runs 8 at a time with vexp8
// (bit-identical to std::exp) and the same operations in the same order.
template <class T> void swiglu_row(T* y, const T* g, const T* u, int H) {
  int j = 0;
#ifdef ANYK_VEXP
  if constexpr (std::is_same_v<T, float>) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (; j + 8 <= H; j += 8) {
      const __m256 gv = _mm256_loadu_ps(g + j);
      const __m256 e = vexp8(_mm256_xor_ps(gv, neg));
      _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + j)));
    }
  }
#endif
  for (; j < H; ++j) y[j] = g[j] / (T(1) + std::exp(-g[j])) * u[j];
}

template <class T> void swiglu_forward(T* out, const T* h, int M, int H) {
#pragma omp parallel for schedule(static) if (int64_t(M) * H >= kRowGrain)
  for (int m = 0; m < M; ++m) {
    const T* g = h + static_cast<int64_t>(m) * 2 * H;
    swiglu_row(out + static_cast<int64_t>(m) * H, g, g + H, H);
  }
}

template <class T> void swiglu_backward(T* dh, const T* dout, const T* h, int M, int H) {
#pragma omp parallel for schedule(static) if (int64_t(M) * H >= kRowGrain)
  for (int m = 0; m < M; ++m) {
    const T* g = h + static_cast<int64_t>(m) * 2 * H;
    const T* u = g + H;
    const T* dy = dout + static_cast<int64_t>(m) * H;
    T* dg = dh + static_cast<int64_t>(m) * 2 * H;
    T* du = dg + H;
    int j0 = 0;
#ifdef ANYK_VEXP
    // 8 at a time: the scalar loop's operations, with its two multiply-adds fused as GCC fuses
    // them there (dg: fma(dy*u*sig, 1 + g*(1-sig), dg), the inner one fma(g, 1-sig, 1); du:
    // fma(silu, dy, du)), read off the scalar build's disassembly.
    if constexpr (std::is_same_v<T, float>) {
      const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
      for (; j0 + 8 <= H; j0 += 8) {
        const __m256 gv = _mm256_loadu_ps(g + j0), uv = _mm256_loadu_ps(u + j0), dyv = _mm256_loadu_ps(dy + j0);
        const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, vexp8(_mm256_xor_ps(gv, neg))));
        const __m256 silu = _mm256_mul_ps(gv, sig);
        const __m256 t = _mm256_mul_ps(_mm256_mul_ps(dyv, uv), sig);
        const __m256 x = _mm256_fmadd_ps(gv, _mm256_sub_ps(one, sig), one);
        _mm256_storeu_ps(dg + j0, _mm256_fmadd_ps(t, x, _mm256_loadu_ps(dg + j0)));
        _mm256_storeu_ps(du + j0, _mm256_fmadd_ps(silu, dyv, _mm256_loadu_ps(du + j0)));
      }
    }
#endif
    for (int j = j0; j < H; ++j) {
      T sig = T(1) / (T(1) + std::exp(-g[j]));
      T silu = g[j] * sig;
      dg[j] += dy[j] * u[j] * sig * (T(1) + g[j] * (T(1) - sig));
      du[j] += dy[j] * silu;
    }
  }
}

// sum over v of exp(z[v] - mx), added in index order; the float path computes the exps 8 at a
// time (vexp8, bit-identical to std::exp) into a small buffer, then adds them one by one.
template <class T> T sum_exp(const T* z, T mx, int V) {
  T s = 0;
  int v = 0;
#ifdef ANYK_VEXP
  if constexpr (std::is_same_v<T, float>) {
    alignas(32) float e[256];
    const __m256 m = _mm256_set1_ps(mx);
    for (; v + 8 <= V;) {
      const int n = std::min(256, (V - v) / 8 * 8);
      for (int i = 0; i < n; i += 8) _mm256_store_ps(e + i, vexp8(_mm256_sub_ps(_mm256_loadu_ps(z + v + i), m)));
      for (int i = 0; i < n; ++i) s += e[i];
      v += n;
    }
  }
#endif
  for (; v < V; ++v) s += std::exp(z[v] - mx);
  return s;
}

template <class T>
void cross_entropy_forward(T* losses, const T* logits, const int* targets, int N, int V) {
#pragma omp parallel for schedule(static) if (int64_t(N) * V >= kRowGrain)
  for (int n = 0; n < N; ++n) {
    const T* z = logits + static_cast<int64_t>(n) * V;
    T mx = z[0];
    for (int v = 1; v < V; ++v) mx = z[v] > mx ? z[v] : mx;
    T s = sum_exp(z, mx, V);
    losses[n] = mx + std::log(s) - z[targets[n]];
  }
}

template <class T>
void cross_entropy_backward(T* dlogits, const T* dlosses, const T* logits, const int* targets, int N,
                            int V) {
#pragma omp parallel for schedule(static) if (int64_t(N) * V >= kRowGrain)
  for (int n = 0; n < N; ++n) {
    const T* z = logits + static_cast<int64_t>(n) * V;
    T* dz = dlogits + static_cast<int64_t>(n) * V;
    T mx = z[0];
    for (int v = 1; v < V; ++v) mx = z[v] > mx ? z[v] : mx;
    T s = sum_exp(z, mx, V);
    T g = dlosses[n], inv = T(1) / s;
    int v0 = 0;
#ifdef ANYK_VEXP
    if constexpr (std::is_same_v<T, float>) {  // dz += fma(g * e, inv, dz), as the scalar build fuses it
      const __m256 m = _mm256_set1_ps(mx), gv = _mm256_set1_ps(g), iv = _mm256_set1_ps(inv);
      for (; v0 + 8 <= V; v0 += 8) {
        const __m256 e = vexp8(_mm256_sub_ps(_mm256_loadu_ps(z + v0), m));
        _mm256_storeu_ps(dz + v0, _mm256_fmadd_ps(_mm256_mul_ps(gv, e), iv, _mm256_loadu_ps(dz + v0)));
      }
    }
#endif
    for (int v = v0; v < V; ++v) dz[v] += g * std::exp(z[v] - mx) * inv;
    dz[targets[n]] -= g;
  }
}

ANYK_INSTANTIATE(embedding_forward)
ANYK_INSTANTIATE(embedding_backward)
ANYK_INSTANTIATE(linear_forward)
ANYK_INSTANTIATE(linear_backward)
ANYK_INSTANTIATE(add_forward)
ANYK_INSTANTIATE(add_backward)
ANYK_INSTANTIATE(scale_forward)
ANYK_INSTANTIATE(scale_backward)
ANYK_INSTANTIATE(rmsnorm_forward)
ANYK_INSTANTIATE(rmsnorm_backward)
ANYK_INSTANTIATE(rope_tables)
ANYK_INSTANTIATE(rope_forward)
ANYK_INSTANTIATE(rope_backward)
ANYK_INSTANTIATE(swiglu_forward)
ANYK_INSTANTIATE(swiglu_backward)
ANYK_INSTANTIATE(cross_entropy_forward)
ANYK_INSTANTIATE(cross_entropy_backward)

}  // namespace anyk::cpu
