// CPU router kernels beyond gating; see router_kernels.h. Every loop keeps the summation order
// of the single router op these came from, so results are bit-identical to it. The EMoE draws
// run the CUDA kernel's row code (kernels/cuda/router_row.cuh); the top-p count keeps its sort
// (the row code walks the order without scratch, same counts: tests/test_cuda_router_row.cpp).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/router_kernels.h"
#include "kernels/cuda/router_row.cuh"  // host/device row code, plain C++ without nvcc

namespace anyk::cpu {

template <class T>
void top_p_count_forward(int* kcount, double* scratch, const T* probs, int N, int E, double p,
                         int k_min, int k_max) {
  for (int n = 0; n < N; ++n) {
    const T* q = probs + static_cast<int64_t>(n) * E;
    for (int e = 0; e < E; ++e) {
      const double x = static_cast<double>(q[e]);
      scratch[e] = std::isnan(x) ? 0.0 : x;  // NaN would break the sort's ordering
    }
    // Only the largest k_max values matter (the answer is capped there).
    std::partial_sort(scratch, scratch + k_max, scratch + E, [](double a, double b) { return a > b; });
    int k = k_max;
    double sum = 0.0;
    for (int j = 1; j <= k_max; ++j) {
      sum += scratch[j - 1];
      if (sum >= p) {
        k = std::max(j, k_min);
        break;
      }
    }
    kcount[n] = k;
  }
}

// Each row is emoe_sample_row (kernels/cuda/router_row.cuh), the code the CUDA kernel runs.
template <class T>
void emoe_sample_forward(int* ids, T* weights, const T* probs, const int* pool_ids, int N, int E,
                         int K, int P, uint64_t key, bool renorm) {
  for (int n = 0; n < N; ++n)
    cuda::row::emoe_sample_row(ids + static_cast<int64_t>(n) * K, weights + static_cast<int64_t>(n) * K,
                               probs + static_cast<int64_t>(n) * E, pool_ids + static_cast<int64_t>(n) * P, n, K, P,
                               key, renorm);
}

void expert_counts(int* counts, const int* ids, int64_t n, int E) {
  std::fill(counts, counts + E, 0);
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] >= 0) ++counts[ids[i]];
}

namespace {
// f_e's denominator: the number of routed assignments.
int64_t total_of(const int* counts, int E) {
  int64_t total = 0;
  for (int e = 0; e < E; ++e) total += counts[e];
  return total;
}
}  // namespace

template <class T>
void lb_loss_forward(double* out, const T* probs, const int* counts, int N, int E) {
  const int64_t total = total_of(counts, E);
  double lb = 0;
  for (int e = 0; e < E; ++e) {
    double P = 0;
    for (int n = 0; n < N; ++n) P += probs[static_cast<int64_t>(n) * E + e];
    P /= N;
    double f = total ? double(counts[e]) / double(total) : 0.0;
    lb += f * P;
  }
  lb *= E;
  out[0] = lb;
}

template <class G>
void lb_loss_backward(G* dprobs, const double* dout, const int* counts, int N, int E) {
  const int64_t total = total_of(counts, E);
  const double ga = dout[0];
  for (int n = 0; n < N; ++n)
    for (int e = 0; e < E; ++e) {
      double f = total ? double(counts[e]) / double(total) : 0.0;
      dprobs[static_cast<int64_t>(n) * E + e] += G(ga * E * f / N);
    }
}

template <class T> void z_loss_forward(double* out, const T* lse, int N) {
  double z = 0;
  for (int n = 0; n < N; ++n) {
    double l = lse[n];
    z += l * l;
  }
  out[0] = z / N;
}

template <class T> void z_loss_backward(T* dlse, const double* dout, const T* lse, int N) {
  const double ga = dout[0];
  for (int n = 0; n < N; ++n) dlse[n] += T(ga * 2.0 * lse[n] / N);
}

template <class T> void kl_loss_forward(double* out, const T* probs, int N, int E) {
  double kl = 0;
  for (int n = 0; n < N; ++n)
    for (int e = 0; e < E; ++e) {
      double q = probs[static_cast<int64_t>(n) * E + e];
      if (q > 0) kl += q * std::log(q * E);
    }
  out[0] = kl / N;
}

template <class T, class G>
void kl_loss_backward(G* dprobs, const double* dout, const T* probs, int N, int E) {
  const double ga = dout[0];
  if (ga == 0) return;
  for (int n = 0; n < N; ++n)
    for (int e = 0; e < E; ++e) {
      double q = probs[static_cast<int64_t>(n) * E + e];
      if (q > 0) dprobs[static_cast<int64_t>(n) * E + e] += G(ga * (std::log(q * E) + 1.0) / N);
    }
}

template <class T, class S>
void router_aux_forward(T* out, const S* lb, const S* z, const S* kl, double cl, double cz, double ck) {
  out[0] = T(cl * lb[0] + cz * z[0] - ck * kl[0]);
}

template <class T, class S>
void router_aux_backward(S* dlb, S* dz, S* dkl, const T* dout, double cl, double cz, double ck) {
  const double g = dout[0];
  if (dlb) dlb[0] += S(g * cl);
  if (dz) dz[0] += S(g * cz);
  if (dkl) dkl[0] -= S(g * ck);
}

template <class T, class S> void convert(T* out, const S* in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = T(in[i]);
}

#define ANYK_INSTANTIATE_ROUTER(fn)       \
  template decltype(fn<float>) fn<float>; \
  template decltype(fn<double>) fn<double>;
ANYK_INSTANTIATE_ROUTER(top_p_count_forward)
ANYK_INSTANTIATE_ROUTER(emoe_sample_forward)
ANYK_INSTANTIATE_ROUTER(lb_loss_forward)
ANYK_INSTANTIATE_ROUTER(lb_loss_backward)
ANYK_INSTANTIATE_ROUTER(z_loss_forward)
ANYK_INSTANTIATE_ROUTER(z_loss_backward)
ANYK_INSTANTIATE_ROUTER(kl_loss_forward)
#define ANYK_INSTANTIATE_PAIR(T, S)                                                              \
  template void kl_loss_backward<T, S>(S*, const double*, const T*, int, int);                  \
  template void router_aux_forward<T, S>(T*, const S*, const S*, const S*, double, double, double); \
  template void router_aux_backward<T, S>(S*, S*, S*, const T*, double, double, double);       \
  template void convert<T, S>(T*, const S*, int64_t);
ANYK_INSTANTIATE_PAIR(float, float)
ANYK_INSTANTIATE_PAIR(float, double)
ANYK_INSTANTIATE_PAIR(double, float)
ANYK_INSTANTIATE_PAIR(double, double)

}  // namespace anyk::cpu
