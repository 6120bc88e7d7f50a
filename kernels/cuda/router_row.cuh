// Per-token-row router logic: plain __host__ __device__ functions that the CUDA kernels run one
// thread per row (router.cu). The CPU kernels call two of them for each row, so these have one
// definition: router_forward_row (softmax, top-K, weights; kernels/cpu/moe.cpp router_forward)
// and emoe_sample_row (kernels/cpu/router.cpp emoe_sample_forward); neither has a multiply-add,
// so the CPU's bits do not depend on where GCC inlines them. The CPU keeps its own loops for the
// other two: router_backward (its multiply-adds contract into FMAs differently when inlined
// elsewhere, an ulp in float) and top_p_count (a partial sort with scratch; the row version walks
// the order without scratch). tests/test_cuda_router_row.cpp compares all four with the CPU.
// Includes nothing CUDA-specific: ANYK_HD (kernels/counter_rng.h) is __host__ __device__ under
// nvcc and empty otherwise, so g++ compiles this as plain C++.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/counter_rng.h"

namespace anyk::cuda::row {

// expf/logf for float, exp/log for double: what std::exp/std::log call on the host.
ANYK_HD inline float r_exp(float x) { return expf(x); }
ANYK_HD inline double r_exp(double x) { return exp(x); }
ANYK_HD inline float r_log(float x) { return logf(x); }
ANYK_HD inline double r_log(double x) { return log(x); }

// One row of router_forward: softmax of z (E) into p (E), its logsumexp, the top-kt ids (K; -1
// past kt) by repeated arg-max (strict '>' over ascending ids: ties keep the lower id) and their
// weights (renormalised over the chosen when renorm).
template <class T>
ANYK_HD void router_forward_row(T* p, T* lse, int32_t* id, T* w, const T* z, int kt, int E, int K,
                                bool renorm) {
  T mx = z[0];
  for (int e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
  T s = 0;
  for (int e = 0; e < E; ++e) {
    p[e] = r_exp(z[e] - mx);
    s += p[e];
  }
  for (int e = 0; e < E; ++e) p[e] /= s;
  *lse = mx + r_log(s);
  T chosen = 0;
  for (int j = 0; j < K; ++j) {
    if (j >= kt) {
      id[j] = -1;
      continue;
    }
    int best = -1;
    for (int e = 0; e < E; ++e) {
      bool taken = false;
      for (int i = 0; i < j; ++i) taken |= (id[i] == e);
      if (!taken && (best < 0 || p[e] > p[best])) best = e;
    }
    id[j] = best;
    chosen += p[best];
  }
  for (int j = 0; j < K; ++j) w[j] = id[j] < 0 ? T(0) : (renorm ? p[id[j]] / chosen : p[id[j]]);
}

// One row of router_backward: dz (E) += the gradient through dw (K), dp (E or null), dl.
template <class T>
ANYK_HD void router_backward_row(T* dz, const T* dw, const T* dp, T dl, const T* p, const int32_t* id,
                                 int E, int K, bool renorm) {
  T S = 0, dwp = 0;
  for (int j = 0; j < K; ++j)
    if (id[j] >= 0) {
      S += p[id[j]];
      dwp += dw[j] * p[id[j]];
    }
  T dot = 0;
  if (dp)
    for (int e = 0; e < E; ++e) dot += dp[e] * p[e];
  for (int j = 0; j < K; ++j)
    if (id[j] >= 0) dot += (renorm ? dw[j] / S - dwp / (S * S) : dw[j]) * p[id[j]];
  for (int e = 0; e < E; ++e) dz[e] += p[e] * ((dp ? dp[e] : T(0)) - dot + dl);
  for (int j = 0; j < K; ++j)
    if (id[j] >= 0) dz[id[j]] += p[id[j]] * (renorm ? dw[j] / S - dwp / (S * S) : dw[j]);
}

// One row of top_p_count_forward without scratch: the k_max largest values of q (E) (NaN as 0)
// are visited in decreasing order by walking the total order (value desc, index asc), so the
// running sum adds exactly the values the CPU's partial_sort puts first, in the same order.
template <class T>
ANYK_HD int top_p_count_row(const T* q, int E, double p, int k_min, int k_max) {
  double prev_v = 0;
  int prev_i = -1;  // nothing visited yet
  double sum = 0.0;
  for (int j = 1; j <= k_max; ++j) {
    double best_v = 0;
    int best_i = -1;
    for (int e = 0; e < E; ++e) {
      const double x0 = static_cast<double>(q[e]);
      const double x = x0 != x0 ? 0.0 : x0;  // NaN counts as zero mass
      // Only entries after the previous pick in the order (value desc, index asc) are left.
      const bool after = prev_i < 0 || x < prev_v || (x == prev_v && e > prev_i);
      if (after && (best_i < 0 || x > best_v)) {
        best_v = x;
        best_i = e;
      }
    }
    if (best_i < 0) break;  // k_max > E: the CPU requires k_max <= E
    prev_v = best_v;
    prev_i = best_i;
    sum += best_v;
    if (sum >= p) return j > k_min ? j : k_min;
  }
  return k_max;
}

// One row of emoe_sample_forward: K of the P pool slots drawn without replacement (partial
// Fisher-Yates, draw j from hash_key(key, n, j)), kept in pool order; ids (K), weights (K).
template <class T>
ANYK_HD void emoe_sample_row(int32_t* ids, T* weights, const T* q, const int32_t* pn, int64_t n, int K,
                             int P, uint64_t key, bool renorm) {
  int slot[64];
  for (int j = 0; j < P; ++j) slot[j] = j;
  for (int j = 0; j < K; ++j) {
    int pick = j + int(uniform_int(hash_key(key, uint64_t(n), uint64_t(j)), uint64_t(P - j)));
    int t = slot[j];
    slot[j] = slot[pick];
    slot[pick] = t;
  }
  for (int j = 1; j < K; ++j) {  // insertion sort: distinct slots, so the CPU's std::sort order
    int v = slot[j], i = j - 1;
    for (; i >= 0 && slot[i] > v; --i) slot[i + 1] = slot[i];
    slot[i + 1] = v;
  }
  double S = 0;
  for (int j = 0; j < K; ++j) S += q[pn[slot[j]]];
  for (int j = 0; j < K; ++j) {
    int e = pn[slot[j]];
    ids[j] = e;
    weights[j] = T(renorm ? q[e] / S : q[e]);
  }
}

}  // namespace anyk::cuda::row
