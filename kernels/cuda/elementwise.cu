// CUDA element-wise kernels, reductions, the fused AdamW update and the bf16 conversions, with the
// semantics of kernels/cpu/elementwise.cpp. Reductions are deterministic: fixed 65536-element
// chunks, each summed by one block in a fixed tree, then the chunk sums by one block in a fixed
// tree (no atomics), so a result does not depend on scheduling.
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace anyk::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = int64_t(1) << 16;  // the CPU's sumsq chunk
constexpr unsigned kMaxBlocks = 1u << 15;     // grid-stride beyond this

unsigned grid_for(int64_t n) {
  const unsigned b = blocks_for(n, kThreads);
  return b < kMaxBlocks ? b : kMaxBlocks;
}

#define ANYK_GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

template <class T> __global__ void fill_kernel(T* out, T v, int64_t n) {
  ANYK_GRID_STRIDE(i, n) out[i] = v;
}

template <class T> __global__ void accumulate_kernel(T* y, const T* x, int64_t n) {
  ANYK_GRID_STRIDE(i, n) y[i] += x[i];
}

template <class T> __global__ void fill_div_kernel(T* out, const T* s, double div, int64_t n) {
  const T g = s[0] / T(div);
  ANYK_GRID_STRIDE(i, n) out[i] = g;
}

// The sum of v over the block (kThreads threads), in a fixed tree; valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double sh[kThreads];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

// part[c] = the sum over chunk c of x (squared when Square), in double.
template <class T, bool Square> __global__ void chunk_sums_kernel(double* part, const T* x, int64_t n) {
  const int64_t begin = int64_t(blockIdx.x) * kChunk;
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  double a = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const double xi = static_cast<double>(x[i]);
    a += Square ? xi * xi : xi;
  }
  const double s = block_sum(a);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// One block: total = the sum of part (chunks); then out[0] = T(total / div) (sum_div) or
// acc[0] += total (sumsq_accumulate).
template <class T> __global__ void finish_sum_kernel(T* out, double* acc, const double* part, int64_t chunks, double div) {
  double a = 0.0;
  for (int64_t c = threadIdx.x; c < chunks; c += kThreads) a += part[c];
  const double total = block_sum(a);
  if (threadIdx.x != 0) return;
  if (out) out[0] = static_cast<T>(total / div);
  if (acc) acc[0] += total;
}

// Partial sums into the workspace, then the finishing block.
template <class T, bool Square>
void reduce(const Ctx& c, T* out, double* acc, const T* x, int64_t n, double div) {
  const int64_t chunks = n > 0 ? (n + kChunk - 1) / kChunk : 0;
  double* part = static_cast<double*>(workspace(size_t(chunks > 0 ? chunks : 1) * sizeof(double)));
  if (chunks > 0) {
    chunk_sums_kernel<T, Square><<<unsigned(chunks), kThreads, 0, stream_of(c)>>>(part, x, n);
    check_launch("chunk_sums");
  }
  finish_sum_kernel<T><<<1, kThreads, 0, stream_of(c)>>>(out, acc, part, chunks, div);
  check_launch("finish_sum");
}

__global__ void first_bad_id_kernel(unsigned long long* first, const int32_t* ids, int64_t n, int V) {
  ANYK_GRID_STRIDE(i, n) {
    if (ids[i] < 0 || ids[i] >= V) atomicMin(first, static_cast<unsigned long long>(i));  // integer min: exact
  }
}

template <class T>
__global__ void adamw_kernel(T* p, T* m, T* v, const T* g, int64_t n, double b1, double b2, double eps,
                             double shrink, double step_size, double inv_sqrt_bc2) {
  ANYK_GRID_STRIDE(i, n) {
    const double gi = g[i];
    const double mi = b1 * m[i] + (1.0 - b1) * gi;
    const double vi = b2 * v[i] + (1.0 - b2) * gi * gi;
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    const double denom = sqrt(vi) * inv_sqrt_bc2 + eps;
    p[i] = static_cast<T>(p[i] * shrink - step_size * mi / denom);
  }
}

// The CPU's bit operations: round to nearest even, NaN kept (sign, top payload) and made quiet.
__global__ void to_bf16_kernel(uint16_t* out, const float* x, int64_t n) {
  ANYK_GRID_STRIDE(i, n) {
    uint32_t b = __float_as_uint(x[i]);
    if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu)) {
      out[i] = uint16_t((b >> 16) | 0x0040u);
    } else {
      b += 0x7fffu + ((b >> 16) & 1u);
      out[i] = uint16_t(b >> 16);
    }
  }
}

__global__ void from_bf16_kernel(float* out, const uint16_t* x, int64_t n) {
  ANYK_GRID_STRIDE(i, n) out[i] = __uint_as_float(uint32_t(x[i]) << 16);
}

// ---- the table entries ----

template <class T> void fill(const Ctx& c, T* out, T v, int64_t n) {
  if (n <= 0) return;
  fill_kernel<T><<<grid_for(n), kThreads, 0, stream_of(c)>>>(out, v, n);
  check_launch("fill");
}

template <class T> void copy(const Ctx& c, T* dst, const T* src, int64_t n) {
  if (n <= 0) return;
  ANYK_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(T), cudaMemcpyDeviceToDevice, stream_of(c)));
}

template <class T> void accumulate(const Ctx& c, T* y, const T* x, int64_t n) {
  if (n <= 0) return;
  accumulate_kernel<T><<<grid_for(n), kThreads, 0, stream_of(c)>>>(y, x, n);
  check_launch("accumulate");
}

template <class T> void fill_div(const Ctx& c, T* out, const T* s, double div, int64_t n) {
  if (n <= 0) return;
  fill_div_kernel<T><<<grid_for(n), kThreads, 0, stream_of(c)>>>(out, s, div, n);
  check_launch("fill_div");
}

template <class T> void sum_div(const Ctx& c, T* out, const T* x, int64_t n, double div) {
  reduce<T, false>(c, out, nullptr, x, n, div);
}

template <class T> void sumsq_accumulate(const Ctx& c, double* acc, const T* x, int64_t n) {
  if (n <= 0) return;
  reduce<T, true>(c, static_cast<T*>(nullptr), acc, x, n, 1.0);
}

int64_t first_bad_id(const Ctx& c, const int32_t* ids, int64_t n, int V) {
  if (n <= 0) return -1;
  auto* first = static_cast<unsigned long long*>(workspace(sizeof(unsigned long long)));
  ANYK_CUDA_CHECK(cudaMemsetAsync(first, 0xff, sizeof(unsigned long long), stream_of(c)));
  first_bad_id_kernel<<<grid_for(n), kThreads, 0, stream_of(c)>>>(first, ids, n, V);
  check_launch("first_bad_id");
  unsigned long long host = 0;
  ANYK_CUDA_CHECK(cudaMemcpyAsync(&host, first, sizeof(host), cudaMemcpyDeviceToHost, stream_of(c)));
  ANYK_CUDA_CHECK(cudaStreamSynchronize(stream_of(c)));
  return host == ~0ull ? -1 : static_cast<int64_t>(host);
}

template <class T>
void adamw_update(const Ctx& c, T* p, T* m, T* v, const T* g, int64_t n, double b1, double b2, double eps,
                  double shrink, double step_size, double inv_sqrt_bc2) {
  if (n <= 0) return;
  adamw_kernel<T><<<grid_for(n), kThreads, 0, stream_of(c)>>>(p, m, v, g, n, b1, b2, eps, shrink, step_size,
                                                               inv_sqrt_bc2);
  check_launch("adamw_update");
}

void to_bf16(const Ctx& c, uint16_t* out, const float* x, int64_t n) {
  if (n <= 0) return;
  to_bf16_kernel<<<grid_for(n), kThreads, 0, stream_of(c)>>>(out, x, n);
  check_launch("to_bf16");
}

void from_bf16(const Ctx& c, float* out, const uint16_t* x, int64_t n) {
  if (n <= 0) return;
  from_bf16_kernel<<<grid_for(n), kThreads, 0, stream_of(c)>>>(out, x, n);
  check_launch("from_bf16");
}

}  // namespace

template <class T> void fill_elementwise(Kernels<T>& k) {
  k.fill = fill<T>;
  k.copy = copy<T>;
  k.accumulate = accumulate<T>;
  k.fill_div = fill_div<T>;
  k.sum_div = sum_div<T>;
  k.sumsq_accumulate = sumsq_accumulate<T>;
  k.first_bad_id = first_bad_id;
  k.adamw_update = adamw_update<T>;
  if constexpr (std::is_same_v<T, float>) {
    k.to_bf16 = to_bf16;
    k.from_bf16 = from_bf16;
  }
}

template void fill_elementwise<float>(Kernels<float>&);
template void fill_elementwise<double>(Kernels<double>&);

}  // namespace anyk::cuda
