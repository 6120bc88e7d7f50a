// CUDA router kernels: gating (softmax, top-K, weights) and its backward, the top-p count, EMoE
// pool sampling, per-expert counts, the auxiliary losses and their combination. Semantics of
// kernels/cpu/moe.cpp and kernels/cpu/router.cpp. Per-row work runs one thread per token row on
// the shared row functions of router_row.cuh (the CPU's loops, same order; the EMoE draws use
// the same counter-based hash, so draws and chosen experts equal the CPU's). Scalar losses are
// summed in double with a fixed-shape block tree: deterministic, equal to the CPU's sequential
// sums up to rounding. Only expert_counts uses atomics (integer ones: exact).
// First version: correctness and determinism first (row-per-thread reads are not coalesced).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/router_row.cuh"

namespace anyk::cuda {

namespace {

constexpr int kThreads = 256;  // a power of two (block_sum's tree)

__device__ int64_t global_index() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }

// Sum of v over the block (blockDim.x == kThreads) by a fixed tree: the same order every run.
// Every thread gets the result.
__device__ double block_sum(double v) {
  __shared__ double sh[kThreads];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (int(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

// ---- gating ----

template <class T>
__global__ void router_forward_k(T* probs, T* lse, int32_t* ids, T* weights, const T* logits,
                                 const int32_t* kcount, int N, int E, int K, bool renorm) {
  const int64_t n = global_index();
  if (n >= N) return;
  row::router_forward_row(probs + n * E, lse + n, ids + n * K, weights + n * K, logits + n * E,
                          kcount ? kcount[n] : K, E, K, renorm);
}

template <class T>
void router_forward(const Ctx& c, T* probs, T* lse, int32_t* ids, T* weights, const T* logits,
                    const int32_t* kcount, int N, int E, int K, bool renorm) {
  if (N <= 0) return;
  router_forward_k<T><<<blocks_for(N), kThreads, 0, stream_of(c)>>>(probs, lse, ids, weights, logits, kcount,
                                                                    N, E, K, renorm);
  check_launch("router_forward");
}

template <class T>
__global__ void router_backward_k(T* dlogits, const T* dweights, const T* dprobs, const T* dlse,
                                  const T* probs, const int32_t* ids, int N, int E, int K, bool renorm) {
  const int64_t n = global_index();
  if (n >= N) return;
  row::router_backward_row(dlogits + n * E, dweights + n * K, dprobs ? dprobs + n * E : nullptr,
                           dlse ? dlse[n] : T(0), probs + n * E, ids + n * K, E, K, renorm);
}

template <class T>
void router_backward(const Ctx& c, T* dlogits, const T* dweights, const T* dprobs, const T* dlse,
                     const T* probs, const int32_t* ids, int N, int E, int K, bool renorm) {
  if (N <= 0) return;
  router_backward_k<T><<<blocks_for(N), kThreads, 0, stream_of(c)>>>(dlogits, dweights, dprobs, dlse, probs,
                                                                     ids, N, E, K, renorm);
  check_launch("router_backward");
}

// ---- top-p count and EMoE sampling ----

template <class T>
__global__ void top_p_count_k(int32_t* kcount, const T* probs, int N, int E, double p, int k_min, int k_max) {
  const int64_t n = global_index();
  if (n < N) kcount[n] = row::top_p_count_row(probs + n * E, E, p, k_min, k_max);
}

// scratch is host memory on the CPU backend: unused here (per-row state lives in registers).
template <class T>
void top_p_count_forward(const Ctx& c, int32_t* kcount, double* /*scratch*/, const T* probs, int N, int E,
                         double p, int k_min, int k_max) {
  if (N <= 0) return;
  ANYK_CHECK(k_min >= 1 && k_min <= k_max && k_max <= E,
             "top_p_count: k_min " << k_min << ", k_max " << k_max << " need 1 <= k_min <= k_max <= E = " << E);
  top_p_count_k<T><<<blocks_for(N), kThreads, 0, stream_of(c)>>>(kcount, probs, N, E, p, k_min, k_max);
  check_launch("top_p_count_forward");
}

template <class T>
__global__ void emoe_sample_k(int32_t* ids, T* weights, const T* probs, const int32_t* pool_ids, int N, int E,
                              int K, int P, uint64_t key, bool renorm) {
  const int64_t n = global_index();
  if (n >= N) return;
  row::emoe_sample_row(ids + n * K, weights + n * K, probs + n * E, pool_ids + n * P, n, K, P, key, renorm);
}

template <class T>
void emoe_sample_forward(const Ctx& c, int32_t* ids, T* weights, const T* probs, const int32_t* pool_ids,
                         int N, int E, int K, int P, uint64_t key, bool renorm) {
  if (N <= 0) return;
  ANYK_CHECK(K >= 1 && K <= P && P <= 64, "emoe_sample: K " << K << ", pool " << P << " need 1 <= K <= P <= 64");
  emoe_sample_k<T><<<blocks_for(N), kThreads, 0, stream_of(c)>>>(ids, weights, probs, pool_ids, N, E, K, P,
                                                                  key, renorm);
  check_launch("emoe_sample_forward");
}

// ---- expert counts (integer atomics: exact in any order) ----

__global__ void expert_counts_k(int32_t* counts, const int32_t* ids, int64_t n, int E) {
  const int64_t i = global_index();
  if (i < n && ids[i] >= 0 && ids[i] < E) atomicAdd(counts + ids[i], 1);
}

template <class T> void expert_counts(const Ctx& c, int32_t* counts, const int32_t* ids, int64_t n, int E) {
  if (E <= 0) return;
  ANYK_CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(int32_t) * size_t(E), stream_of(c)));
  if (n <= 0) return;
  expert_counts_k<<<blocks_for(n), kThreads, 0, stream_of(c)>>>(counts, ids, n, E);
  check_launch("expert_counts");
}

// ---- auxiliary losses ----

// The number of routed assignments (sum of counts), in double (exact below 2^53).
__device__ double block_total(const int32_t* counts, int E) {
  double t = 0;
  for (int e = threadIdx.x; e < E; e += kThreads) t += counts[e];
  return block_sum(t);
}

// One block: lb = E * sum_e f_e P_e, P_e = mean over n of probs[n][e].
template <class T> __global__ void lb_loss_forward_k(double* out, const T* probs, const int32_t* counts, int N, int E) {
  const double total = block_total(counts, E);
  double lb = 0;
  for (int e = 0; e < E; ++e) {
    double v = 0;
    for (int64_t n = threadIdx.x; n < N; n += kThreads) v += probs[n * E + e];
    const double P = block_sum(v) / N;
    const double f = total != 0 ? double(counts[e]) / total : 0.0;
    lb += f * P;
  }
  if (threadIdx.x == 0) out[0] = lb * E;
}

template <class T> void lb_loss_forward(const Ctx& c, double* out, const T* probs, const int32_t* counts, int N, int E) {
  lb_loss_forward_k<T><<<1, kThreads, 0, stream_of(c)>>>(out, probs, counts, N, E);
  check_launch("lb_loss_forward");
}

template <class G>
__global__ void lb_loss_backward_k(G* dprobs, const double* dout, const int32_t* counts, int N, int E) {
  const double total = block_total(counts, E);  // each block recomputes it (E is small)
  const double ga = dout[0];
  const int64_t n_all = int64_t(N) * E;
  for (int64_t i = global_index(); i < n_all; i += int64_t(gridDim.x) * kThreads) {
    const double f = total != 0 ? double(counts[i % E]) / total : 0.0;
    dprobs[i] += G(ga * E * f / N);
  }
}

template <class T> void lb_loss_backward(const Ctx& c, T* dprobs, const double* dout, const int32_t* counts, int N, int E) {
  const int64_t n = int64_t(N) * E;
  if (n <= 0) return;
  const unsigned blocks = blocks_for(n) < 1024 ? blocks_for(n) : 1024;
  lb_loss_backward_k<T><<<blocks, kThreads, 0, stream_of(c)>>>(dprobs, dout, counts, N, E);
  check_launch("lb_loss_backward");
}

template <class T> __global__ void z_loss_forward_k(double* out, const T* lse, int N) {
  double v = 0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {
    const double l = lse[n];
    v += l * l;
  }
  const double z = block_sum(v);
  if (threadIdx.x == 0) out[0] = z / N;
}

template <class T> void z_loss_forward(const Ctx& c, double* out, const T* lse, int N) {
  z_loss_forward_k<T><<<1, kThreads, 0, stream_of(c)>>>(out, lse, N);
  check_launch("z_loss_forward");
}

template <class T> __global__ void z_loss_backward_k(T* dlse, const double* dout, const T* lse, int N) {
  const int64_t n = global_index();
  if (n < N) dlse[n] += T(dout[0] * 2.0 * lse[n] / N);
}

template <class T> void z_loss_backward(const Ctx& c, T* dlse, const double* dout, const T* lse, int N) {
  if (N <= 0) return;
  z_loss_backward_k<T><<<blocks_for(N), kThreads, 0, stream_of(c)>>>(dlse, dout, lse, N);
  check_launch("z_loss_backward");
}

// The log of q E in the type the CPU uses (double).
template <class T> __global__ void kl_loss_forward_k(double* out, const T* probs, int N, int E) {
  double v = 0;
  const int64_t n_all = int64_t(N) * E;
  for (int64_t i = threadIdx.x; i < n_all; i += kThreads) {
    const double q = probs[i];
    if (q > 0) v += q * log(q * E);
  }
  const double kl = block_sum(v);
  if (threadIdx.x == 0) out[0] = kl / N;
}

template <class T> void kl_loss_forward(const Ctx& c, double* out, const T* probs, int N, int E) {
  kl_loss_forward_k<T><<<1, kThreads, 0, stream_of(c)>>>(out, probs, N, E);
  check_launch("kl_loss_forward");
}

template <class T, class G>
__global__ void kl_loss_backward_k(G* dprobs, const double* dout, const T* probs, int N, int E) {
  const double ga = dout[0];
  const int64_t i = global_index();
  if (ga == 0 || i >= int64_t(N) * E) return;
  const double q = probs[i];
  if (q > 0) dprobs[i] += G(ga * (log(q * E) + 1.0) / N);
}

template <class T, class G> void kl_loss_backward(const Ctx& c, G* dprobs, const double* dout, const T* probs, int N, int E) {
  const int64_t n = int64_t(N) * E;
  if (n <= 0) return;
  kl_loss_backward_k<T, G><<<blocks_for(n), kThreads, 0, stream_of(c)>>>(dprobs, dout, probs, N, E);
  check_launch("kl_loss_backward");
}

// ---- combination of the three losses, and the f64 gradient conversion ----

template <class T, class S>
__global__ void router_aux_forward_k(T* out, const S* lb, const S* z, const S* kl, double cl, double cz, double ck) {
  out[0] = T(cl * lb[0] + cz * z[0] - ck * kl[0]);
}

template <class T, class S>
void router_aux_forward(const Ctx& c, T* out, const S* lb, const S* z, const S* kl, double cl, double cz, double ck) {
  router_aux_forward_k<T, S><<<1, 1, 0, stream_of(c)>>>(out, lb, z, kl, cl, cz, ck);
  check_launch("router_aux_forward");
}

template <class T, class S>
__global__ void router_aux_backward_k(S* dlb, S* dz, S* dkl, const T* dout, double cl, double cz, double ck) {
  const double g = dout[0];
  if (dlb) dlb[0] += S(g * cl);
  if (dz) dz[0] += S(g * cz);
  if (dkl) dkl[0] -= S(g * ck);
}

template <class T, class S>
void router_aux_backward(const Ctx& c, S* dlb, S* dz, S* dkl, const T* dout, double cl, double cz, double ck) {
  if (!dlb && !dz && !dkl) return;
  router_aux_backward_k<T, S><<<1, 1, 0, stream_of(c)>>>(dlb, dz, dkl, dout, cl, cz, ck);
  check_launch("router_aux_backward");
}

template <class T> __global__ void convert_from_f64_k(T* out, const double* in, int64_t n) {
  const int64_t i = global_index();
  if (i < n) out[i] = T(in[i]);
}

template <class T> void convert_from_f64(const Ctx& c, T* out, const double* in, int64_t n) {
  if (n <= 0) return;
  convert_from_f64_k<T><<<blocks_for(n), kThreads, 0, stream_of(c)>>>(out, in, n);
  check_launch("convert_from_f64");
}

}  // namespace

template <class T> void fill_router(Kernels<T>& k) {
  k.router_forward = router_forward<T>;
  k.router_backward = router_backward<T>;
  k.top_p_count_forward = top_p_count_forward<T>;
  k.emoe_sample_forward = emoe_sample_forward<T>;
  k.expert_counts = expert_counts<T>;
  k.lb_loss_forward = lb_loss_forward<T>;
  k.lb_loss_backward = lb_loss_backward<T>;
  k.z_loss_forward = z_loss_forward<T>;
  k.z_loss_backward = z_loss_backward<T>;
  k.kl_loss_forward = kl_loss_forward<T>;
  k.kl_loss_backward = kl_loss_backward<T, T>;
  k.kl_loss_backward_f64 = kl_loss_backward<T, double>;
  k.router_aux_forward = router_aux_forward<T, T>;
  k.router_aux_forward_f64 = router_aux_forward<T, double>;
  k.router_aux_backward = router_aux_backward<T, T>;
  k.router_aux_backward_f64 = router_aux_backward<T, double>;
  k.convert_from_f64 = convert_from_f64<T>;
}

template void fill_router<float>(Kernels<float>&);
template void fill_router<double>(Kernels<double>&);

}  // namespace anyk::cuda
