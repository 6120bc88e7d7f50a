// CPU kernels used only by inference (model/generate): the attention of new queries over a
// sequence's KV cache, and the few-rows matmul of decode steps.
// Attention: one head per OpenMP task when the work is large enough; Eigen maps with row strides,
// no copies. The scaling, the causal softmax and the product order are those of
// attention_forward, so a cached step reproduces the full forward's row.
// Few-rows matmul: each weight row is read once and dotted with every input row (a decode step
// has one row per sequence, or a few per expert), which a GEMM would first copy into packed
// panels: for a handful of rows that copy costs more than the arithmetic.
#include <algorithm>
#include <cmath>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "kernels/cpu/eigen_maps.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/parallel.h"

namespace anyk::cpu {

namespace {

// 32-byte vectors (GCC/Clang vector extensions: AVX registers on x86-64-v3, two NEON registers
// elsewhere); loads are unaligned copies.
template <class T> struct Lanes;
template <> struct Lanes<float> {
  typedef float V __attribute__((vector_size(32)));
};
template <> struct Lanes<double> {
  typedef double V __attribute__((vector_size(32)));
};
template <class T> using Vec = typename Lanes<T>::V;
template <class T> constexpr int kLanes = int(sizeof(Vec<T>) / sizeof(T));

// Returned by value: an out-parameter made GCC copy each vector through the stack (measured 2x
// slower). Without AVX, GCC notes that 32-byte vector returns change the ABI: these functions are
// inlined, local to this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <class T> inline Vec<T> load(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// Weight elements and vectors: f32 (or f64) as they are; bf16 (the upper 16 bits of an f32, as
// uint16_t) widened exactly to f32 by a shift of 16, so that a bf16 product sums exactly what the
// f32 kernel sums over the widened weights, in the same order (same bits).
inline float widen(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline float widen(float v) { return v; }
inline double widen(double v) { return v; }
template <class T> inline Vec<T> loadw(const T* p) { return load(p); }
inline Vec<float> loadw(const uint16_t* p) {
#if defined(__AVX2__)
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return Vec<float>(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
#else
  Vec<float> v;
  for (int l = 0; l < 8; ++l) v[l] = widen(p[l]);
  return v;
#endif
}

// The lane sums of 4 accumulators, each by the tree ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) (float;
// (l0+l1)+(l2+l3) for double): AVX's horizontal adds where compiled for it, the same tree in
// scalar code elsewhere.
inline void lane_sums(const Vec<float>& a0, const Vec<float>& a1, const Vec<float>& a2, const Vec<float>& a3,
                      float* s) {
#if defined(__AVX__)
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(__m256(a0), __m256(a1)), _mm256_hadd_ps(__m256(a2), __m256(a3)));
  _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
#else
  const Vec<float> a[4] = {a0, a1, a2, a3};
  for (int b = 0; b < 4; ++b) {
    const Vec<float>& l = a[b];
    s[b] = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
  }
#endif
}
inline void lane_sums(const Vec<double>& a0, const Vec<double>& a1, const Vec<double>& a2, const Vec<double>& a3,
                      double* s) {
#if defined(__AVX__)
  const __m256d h01 = _mm256_hadd_pd(__m256d(a0), __m256d(a1)), h23 = _mm256_hadd_pd(__m256d(a2), __m256d(a3));
  const __m256d lo = _mm256_permute2f128_pd(h01, h23, 0x20), hi = _mm256_permute2f128_pd(h01, h23, 0x31);
  _mm256_storeu_pd(s, _mm256_add_pd(lo, hi));
#else
  const Vec<double> a[4] = {a0, a1, a2, a3};
  for (int b = 0; b < 4; ++b) {
    const Vec<double>& l = a[b];
    s[b] = (l[0] + l[1]) + (l[2] + l[3]);
  }
#endif
}

// a + x*w, with one rounding (FMA) wherever the target has FMA. Written out rather than left to
// GCC's contraction of `a += x * w`, which is a tuning choice: -march=native on Zen (-mtune=znver*)
// leaves a single-accumulator chain unfused (avoid-fma-max-bits) but fuses the blocked paths, so
// the 1-row path rounded differently from a batch. Without FMA (x86-64, x86-64-v2) nothing fuses.
#if defined(__FMA__)
inline Vec<float> madd(const Vec<float>& a, const Vec<float>& x, const Vec<float>& w) {
  return Vec<float>(_mm256_fmadd_ps(__m256(x), __m256(w), __m256(a)));
}
inline Vec<double> madd(const Vec<double>& a, const Vec<double>& x, const Vec<double>& w) {
  return Vec<double>(_mm256_fmadd_pd(__m256d(x), __m256d(w), __m256d(a)));
}
inline float madd(float a, float x, float w) { return __builtin_fmaf(x, w, a); }
inline double madd(double a, double x, double w) { return __builtin_fma(x, w, a); }
#else
template <class V> inline V madd(const V& a, const V& x, const V& w) { return a + x * w; }
#endif

// The elements of I past its last full vector, added in order (out of the hot path).
template <class T, class WT> __attribute__((noinline)) T add_tail(T s, const T* x, const WT* w, int i0, int I) {
  for (int i = i0; i < I; ++i) s = madd(s, x[i], T(widen(w[i])));
  return s;
}

// out[m][o] for R input rows m0.. of x (row stride xs) and the B weight rows w[0..B) (rows past O
// repeat the last one and are not stored: nb valid): R*B vector accumulators over the full vectors
// of I, each weight vector loaded once for the R rows, then the lane sums and the tail elements.
// Every (m, o) is summed in the same order whatever R, B, M and the row's place in the batch. pf,
// when set, is prefetched into L2 in step with the reads (the block a few blocks ahead, in address
// order: several short row streams at once defeat the hardware prefetcher). WT: the weights' type
// (T, or uint16_t bf16 bits with T = float).
template <class T, class WT, int R, int B>
inline void dot_block(T* out, const T* x, int64_t xs, const WT* const* w, const WT* pf, int I, int O, int m0,
                      int nb) {
  static_assert(B >= 1 && B <= 4, "lane_sums reduces 4 accumulators (B < 4: some twice)");
  constexpr int n = kLanes<T>;
  const int Iv = I - I % n;
  Vec<T> acc[R][B];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < B; ++b) acc[r][b] = Vec<T>{};
  const T* xr = x + m0 * xs;
  for (int i = 0; i < Iv; i += n) {
    if (pf)
      for (int q = 0; q < B * n; q += int(64 / sizeof(WT))) __builtin_prefetch(pf + int64_t(i) * B + q, 0, 2);
    Vec<T> wv[B];
    for (int b = 0; b < B; ++b) wv[b] = loadw(w[b] + i);
    for (int r = 0; r < R; ++r) {
      const Vec<T> xv = load(xr + r * xs + i);
      for (int b = 0; b < B; ++b) acc[r][b] = madd(acc[r][b], xv, wv[b]);
    }
  }
  for (int r = 0; r < R; ++r) {
    T s[4];
    lane_sums(acc[r][0], acc[r][1 % B], acc[r][2 % B], acc[r][3 % B], s);
    T* o = out + int64_t(m0 + r) * O;
    for (int b = 0; b < nb; ++b) o[b] = Iv < I ? add_tail(s[b], xr + r * xs, w[b], Iv, I) : s[b];
  }
}

// The input rows against one block of weight rows, in groups: 1-3 rows as one group (B = 4); 4 or
// more (B = 3) by 4, the last 6 as 3 + 3 and the last 7 as 4 + 3 (not 4 + 2 and 4 + 2 + 1: a group
// of one or two rows is 3 or 6 dependent FMA chains, bound by the FMA latency). A last 5 stays
// 4 + 1 (measured faster than 3 + 2). Only the first group prefetches.
template <class T, class WT, int B>
inline void dot_groups(T* out, const T* x, int64_t xs, const WT* const* rows, const WT* pf, int M, int I, int O,
                       int nb) {
  if constexpr (B == 4) {
    if (M == 3) dot_block<T, WT, 3, B>(out, x, xs, rows, pf, I, O, 0, nb);
    else if (M == 2) dot_block<T, WT, 2, B>(out, x, xs, rows, pf, I, O, 0, nb);
    else dot_block<T, WT, 1, B>(out, x, xs, rows, pf, I, O, 0, nb);
  } else {
    const int r = M % 4, fours = r == 2 ? M / 4 - 1 : M / 4;
    int m = 0;
    for (; m < 4 * fours; m += 4, pf = nullptr) dot_block<T, WT, 4, B>(out, x, xs, rows, pf, I, O, m, nb);
    if (r == 1) dot_block<T, WT, 1, B>(out, x, xs, rows, pf, I, O, m, nb);
    if (r == 2) dot_block<T, WT, 3, B>(out, x, xs, rows, pf, I, O, m, nb), m += 3, pf = nullptr;
    if (r >= 2) dot_block<T, WT, 3, B>(out, x, xs, rows, pf, I, O, m, nb);
  }
}

// Every row of x against the weight rows in blocks of B, each block streamed once from memory
// (prefetched `ahead` blocks ahead) and dotted with the input rows while it sits in L1. The
// accumulators, B weight vectors and an input vector fit the 16 AVX registers. Input rows whose
// length is a multiple of 1 KiB (w2's rows of H = 1024: 4 KiB) all fall in the same few L1 sets at
// a given i, with the weight rows: from 5 rows on they evict each other, so they are first copied
// 64 bytes apart (the same values: the same bits).
template <class T, class WT, int B> void dot_all(T* out, const T* x, const WT* w, int M, int I, int O) {
  // 32 KiB ahead whatever the row length: measured 5% faster from memory than 32 rows ahead
  // (which was 128 KiB for the rows of H = 1024 of w2).
  const int ahead = std::max(1, int(32768 / (int64_t(I) * int64_t(sizeof(WT)) * B)));
  const int64_t grain = regions_cheap() ? kFewRowsSpinGrainFlops : kGemmGrainFlops;  // parallel.h
  const bool par = int64_t(O) * I * M >= grain;
  if (par) governor_tick();  // as in for_row_chunks
  const int nblocks = (O + B - 1) / B;
  int64_t xs = I;
  static thread_local std::vector<T> padded;
  if (M >= 5 && (int64_t(I) * int64_t(sizeof(T))) % 1024 == 0) {
    xs = I + int64_t(64 / sizeof(T));
    if (padded.size() < size_t(M * xs)) padded.resize(size_t(M * xs));
    for (int m = 0; m < M; ++m) std::copy(x + int64_t(m) * I, x + int64_t(m + 1) * I, padded.data() + m * xs);
    x = padded.data();
  }
#pragma omp parallel for schedule(static) if (par)
  for (int ob = 0; ob < nblocks; ++ob) {
    const int o0 = ob * B, nb = std::min(B, O - o0);
    const WT* rows[B];
    for (int b = 0; b < B; ++b) rows[b] = w + int64_t(o0 + std::min(b, nb - 1)) * I;
    // The block `ahead` further on, when it is whole (a partial last block would read past w).
    const WT* pf = B > 1 && int64_t(o0) + (ahead + 1) * B <= O ? w + int64_t(o0 + ahead * B) * I : nullptr;
    dot_groups<T, WT, B>(out + o0, x, xs, rows, pf, M, I, O, nb);
  }
}

// The scaled scores of one query row against keys 0..last, every head (NH heads of D columns),
// into a + h*len: keys 4 at a time (their 4 dot products per head reduced together by lane_sums),
// each block of 4 key rows read whole, every head in turn, so that the cache streams once in
// address order (one head at a time read a strided quarter of every row per sweep); the value rows
// of the block are prefetched into L2 for the product with the values that follows. In a batched
// step the caches come from memory (other sequences' weights and caches came between): profiled,
// its attention took 1.8x the time of the same rows decoded one sequence at a time. Each score's
// sum is that of one head alone, in the order of the former per-head loop (same bits).
constexpr int kAheadKeys = 16;  // key rows prefetched ahead of the scores
template <class T>
void head_scores(T* a, const T* q, const T* kc, const T* vc, int last, int len, int C, int NH, int D, T scale) {
  constexpr int n = kLanes<T>;
  const int Dv = D - D % n;
  // The first kAheadKeys key rows at once (the loop prefetches from there on): a decode step's
  // cache is a few dozen rows, whose start the hardware prefetcher would reach late.
  for (int r = 0; r < std::min(kAheadKeys, last + 1); ++r)
    for (int c = 0; c < C; c += int(64 / sizeof(T))) __builtin_prefetch(kc + int64_t(r) * C + c, 0, 2);
  int j = 0;
  for (; j + 4 <= last + 1; j += 4) {
    const T* k0 = kc + int64_t(j) * C;
    for (int c = 0; c < 4 * C; c += int(64 / sizeof(T))) {
      __builtin_prefetch(k0 + int64_t(kAheadKeys) * C + c, 0, 2);
      __builtin_prefetch(vc + int64_t(j) * C + c, 0, 2);
    }
    for (int h = 0; h < NH; ++h) {
      const T* qh = q + int64_t(h) * D;
      const T* kh = k0 + int64_t(h) * D;
      Vec<T> c0{}, c1{}, c2{}, c3{};
      for (int d = 0; d < Dv; d += n) {
        const Vec<T> qv = load(qh + d);
        c0 = madd(c0, qv, load(kh + d));
        c1 = madd(c1, qv, load(kh + C + d));
        c2 = madd(c2, qv, load(kh + 2 * C + d));
        c3 = madd(c3, qv, load(kh + 3 * C + d));
      }
      T s[4];
      lane_sums(c0, c1, c2, c3, s);
      T* ah = a + int64_t(h) * len;
      for (int b = 0; b < 4; ++b) ah[j + b] = (Dv < D ? add_tail(s[b], qh, kh + b * C, Dv, D) : s[b]) * scale;
    }
  }
  for (; j <= last; ++j)
    for (int h = 0; h < NH; ++h) {
      const T* qh = q + int64_t(h) * D;
      const T* kh = kc + int64_t(j) * C + int64_t(h) * D;
      Vec<T> c{};
      for (int d = 0; d < Dv; d += n) c = madd(c, load(qh + d), load(kh + d));
      T s[4];
      lane_sums(c, c, c, c, s);
      a[int64_t(h) * len + j] = (Dv < D ? add_tail(s[0], qh, kh, Dv, D) : s[0]) * scale;
    }
}

// One head's attention output from its scores a (len; keys 0..last): the softmax in place (as
// attention_forward: the maximum, exp, the sum, times its inverse; zeros past last), then
// o = a V by vectors of the head's columns held in registers across the keys. Eigen's
// matrix-vector products cost more in call overhead than in arithmetic here (D = 64, a few hundred
// keys). o: the head's D values; vc: its first column in the value cache (row stride C).
template <class T> void head_output(T* o, T* a, const T* vc, int last, int len, int C, int D) {
  constexpr int n = kLanes<T>;
  const int Dv = D - D % n;
  T mx = a[0];
  for (int i = 1; i <= last; ++i) mx = a[i] > mx ? a[i] : mx;
  T sum = 0;
  for (int i = 0; i <= last; ++i) {
    a[i] = std::exp(a[i] - mx);
    sum += a[i];
  }
  const T inv = T(1) / sum;
  for (int i = 0; i <= last; ++i) a[i] *= inv;
  for (int i = last + 1; i < len; ++i) a[i] = 0;
  constexpr int W = 4;  // vectors of o in registers per sweep over the keys
  int d = 0;
  for (; d + W * n <= Dv; d += W * n) {
    Vec<T> r[W] = {};
    for (int i = 0; i <= last; ++i) {
      Vec<T> av;
      for (int l = 0; l < n; ++l) av[l] = a[i];
      for (int w = 0; w < W; ++w) r[w] = madd(r[w], av, load(vc + int64_t(i) * C + d + w * n));
    }
    __builtin_memcpy(o + d, r, sizeof r);
  }
  for (; d < Dv; d += n) {
    Vec<T> r{};
    for (int i = 0; i <= last; ++i) {
      Vec<T> av;
      for (int l = 0; l < n; ++l) av[l] = a[i];
      r = madd(r, av, load(vc + int64_t(i) * C + d));
    }
    __builtin_memcpy(o + d, &r, sizeof r);
  }
  for (; d < D; ++d) {
    T r = 0;
    for (int i = 0; i <= last; ++i) r = madd(r, a[i], vc[int64_t(i) * C + d]);
    o[d] = r;
  }
}

}  // namespace

template <class T>
void attention_cached_forward(T* out, T* scores, const T* q, int q_stride, const T* kc, const T* vc, int n,
                              int len, int C, int NH) {
  const int D = C / NH;
  const int p0 = len - n;  // position of the first new query
  const T scale = T(1) / std::sqrt(T(D));
  const bool par = int64_t(n) * len * C >= kGemmGrainFlops;
  if (n == 1 && !par) {  // a decode step: every head's scores in one pass over the keys
    head_scores(scores, q, kc, vc, len - 1, len, C, NH, D, scale);
    for (int h = 0; h < NH; ++h)
      head_output(out + int64_t(h) * D, scores + int64_t(h) * len, vc + int64_t(h) * D, len - 1, len, C, D);
    return;
  }
  eigen_serial();
#pragma omp parallel for schedule(static) if (par)
  for (int h = 0; h < NH; ++h) {
    if (n == 1) {  // a decode step (serial whenever the heads are small enough to read together)
      head_scores(scores + int64_t(h) * len, q + int64_t(h) * D, kc + int64_t(h) * D, vc + int64_t(h) * D,
                  len - 1, len, C, 1, D, scale);
      head_output(out + int64_t(h) * D, scores + int64_t(h) * len, vc + int64_t(h) * D, len - 1, len, C, D);
      continue;
    }
    CSMatMap<T> Q(q + int64_t(h) * D, n, D, Eigen::OuterStride<>(q_stride));
    CSMatMap<T> K(kc + int64_t(h) * D, len, D, Eigen::OuterStride<>(C));
    CSMatMap<T> V(vc + int64_t(h) * D, len, D, Eigen::OuterStride<>(C));
    MatMap<T> A(scores + int64_t(h) * n * len, n, len);
    A.noalias() = (Q * K.transpose()) * scale;
    for (int i = 0; i < n; ++i) {
      T* a = A.data() + int64_t(i) * len;
      const int last = p0 + i;  // keys 0..last are visible
      T mx = a[0];
      for (int j = 1; j <= last; ++j) mx = a[j] > mx ? a[j] : mx;
      T s = 0;
      for (int j = 0; j <= last; ++j) {
        a[j] = std::exp(a[j] - mx);
        s += a[j];
      }
      T inv = T(1) / s;
      for (int j = 0; j <= last; ++j) a[j] *= inv;
      for (int j = last + 1; j < len; ++j) a[j] = 0;  // causal mask
    }
    SMatMap<T> O(out + int64_t(h) * D, n, D, Eigen::OuterStride<>(C));
    O.noalias() = A * V;
  }
}

// Up to 3 rows: blocks of 4 weight rows, input rows by 3 (12 accumulators; the remainder by 2,
// then 1); one row alone has 4 independent FMA chains (one weight row at a time is bound by the
// FMA latency, 1.4-2x slower in cache and no faster from memory, prefetched). 4 rows and more:
// blocks of 3 weight rows, input rows by 4 (12 accumulators; dot_groups, dot_all for the rest). Both replace the former 8-accumulator
// blocks (4x2, 2x4): in L1, 74-91 GFLOP/s at 3-8 rows against 60-68 (f32, 256x256 and 64x1024),
// so that up to about 5 rows per expert a product is bound by memory, not by the multiply-adds.
// Same bits every way (tests/test_decode_kernels.cpp).
template <class T> void linear_rows_forward(T* out, const T* x, const T* w, int M, int I, int O) {
  if (M >= 4) dot_all<T, T, 3>(out, x, w, M, I, O);
  else dot_all<T, T, 4>(out, x, w, M, I, O);
}

// The same blocks and order of sums with bf16 weights widened as they are loaded: half the bytes
// read per weight, and the bits of linear_rows_forward over the widened weights.
void linear_rows_forward_bf16(float* out, const float* x, const uint16_t* w, int M, int I, int O) {
  if (M >= 4) dot_all<float, uint16_t, 3>(out, x, w, M, I, O);
  else dot_all<float, uint16_t, 4>(out, x, w, M, I, O);
}

ANYK_INSTANTIATE(attention_cached_forward)
ANYK_INSTANTIATE(linear_rows_forward)

}  // namespace anyk::cpu
