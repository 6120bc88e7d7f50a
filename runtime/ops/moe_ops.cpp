// The MoE ops and their gradient rules: the router (top-K routing plus the load-balance, z and
// hierarchical-KL losses), the row gather / weighted scatter-add permutation duals, and the
// per-expert grouped matmul.
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "kernels/cpu/kernels.h"  // the router only (its kernels move to the table with the router split)
#include "runtime/ops/kernel_call.h"
#include "runtime/ops/ops.h"
#include "runtime/rng.h"

namespace anyk {

template <class T>
int top_p_count(const T* probs, int E, double p, int k_min, int k_max) {
  ANYK_CHECK(E >= 1 && k_min >= 1 && k_min <= k_max && k_max <= E,
             "top_p_count: need 1 <= k_min <= k_max <= E, got k_min = "
                 << k_min << ", k_max = " << k_max << ", E = " << E);
  ANYK_CHECK(p > 0.0 && p <= 1.0, "top_p_count: p = " << p << " is outside (0, 1]");
  // Only the largest k_max values matter (the answer is capped there), so partially sort those.
  // Small E stays on the stack: this runs once per token.
  constexpr int kStack = 256;
  std::array<double, kStack> stack_buf;
  std::vector<double> heap_buf;
  double* buf = stack_buf.data();
  if (E > kStack) {
    heap_buf.resize(static_cast<size_t>(E));
    buf = heap_buf.data();
  }
  for (int e = 0; e < E; ++e) {
    const double x = static_cast<double>(probs[e]);
    buf[e] = std::isnan(x) ? 0.0 : x;  // NaN would break the sort's ordering
  }
  std::partial_sort(buf, buf + k_max, buf + E, [](double a, double b) { return a > b; });
  double sum = 0.0;
  for (int k = 1; k <= k_max; ++k) {
    sum += buf[k - 1];
    if (sum >= p) return std::max(k, k_min);
  }
  return k_max;
}

template int top_p_count<float>(const float*, int, double, int, int);
template int top_p_count<double>(const double*, int, double, int, int);

RouterOut router(Tape& tape, const Var& logits, int K, const RouterOptions& opt) {
  ANYK_CHECK(logits.shape().ndim == 2, "router expects logits (N,E), got " << logits.shape().str());
  int N = int(logits.shape()[0]), E = int(logits.shape()[1]);
  ANYK_CHECK(K >= 1 && K <= E, "router: K = " << K << " must be in [1, E=" << E << "]");
  Arena& arena = tape.arena();
  RouterOut r;
  r.probs = arena.tensor({N, E}, logits.dtype());
  Tensor lse = arena.tensor({N}, logits.dtype());
  int* ids = arena.alloc_n<int>(size_t(N) * K);
  int* counts = arena.alloc_n<int>(E);
  r.weights = tape.make({N, K}, logits.dtype(), logits.requires_grad());
  r.aux = tape.make({1}, logits.dtype(), logits.requires_grad());
  // Per-expert fraction of assignments f_e (no gradient) and mean probability P_e.
  double* f = arena.alloc_n<double>(E);
  dispatch(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* p = r.probs.dev_ptr<T>();
    cpu::router_forward<T>(p, lse.dev_ptr<T>(), ids, r.weights.val.dev_ptr<T>(), logits.val.dev_ptr<T>(),
                           nullptr, N, E, K, opt.renormalize);
    if (opt.pool > K) {
      // EMoE: top-`pool` by probability, then K of them per token, uniformly without
      // replacement (a partial Fisher-Yates on pool slots), kept in probability order.
      ANYK_CHECK(opt.pool <= E, "router: EMoE pool " << opt.pool << " exceeds E = " << E);
      const int Pk = opt.pool;
      int* pid = arena.alloc_n<int>(size_t(N) * Pk);
      T* pw = arena.alloc_n<T>(size_t(N) * Pk);
      cpu::router_forward<T>(p, lse.dev_ptr<T>(), pid, pw, logits.val.dev_ptr<T>(), nullptr, N, E, Pk, opt.renormalize);
      T* w = r.weights.val.dev_ptr<T>();
      for (int n = 0; n < N; ++n) {
        int slot[64];
        ANYK_CHECK(Pk <= 64, "router: EMoE pool " << Pk << " is larger than 64");
        for (int j = 0; j < Pk; ++j) slot[j] = j;
        for (int j = 0; j < K; ++j) {
          int pick = j + int(uniform_int(hash_key(opt.sample_key, uint64_t(n), uint64_t(j)), uint64_t(Pk - j)));
          std::swap(slot[j], slot[pick]);
        }
        std::sort(slot, slot + K);  // probability order (the pool is sorted best first)
        const int* pn = pid + int64_t(n) * Pk;
        double S = 0;
        for (int j = 0; j < K; ++j) S += p[int64_t(n) * E + pn[slot[j]]];
        for (int j = 0; j < K; ++j) {
          int e = pn[slot[j]];
          ids[int64_t(n) * K + j] = e;
          w[int64_t(n) * K + j] = T(opt.renormalize ? p[int64_t(n) * E + e] / S : p[int64_t(n) * E + e]);
        }
      }
    } else if (opt.top_p > 0) {
      // Per-token K: the smallest k whose sorted probabilities reach top_p, in [k_min, K].
      int* kc = arena.alloc_n<int>(N);
      for (int n = 0; n < N; ++n) kc[n] = top_p_count<T>(p + int64_t(n) * E, E, opt.top_p, std::min(opt.k_min, K), K);
      cpu::router_forward<T>(p, lse.dev_ptr<T>(), ids, r.weights.val.dev_ptr<T>(), logits.val.dev_ptr<T>(), kc,
                             N, E, K, opt.renormalize);
    }
    std::fill(counts, counts + E, 0);
    int64_t total = 0;
    for (int64_t i = 0; i < int64_t(N) * K; ++i)
      if (ids[i] >= 0) ++counts[ids[i]], ++total;
    double lb = 0, z = 0, kl = 0;
    for (int e = 0; e < E; ++e) {
      double P = 0;
      for (int n = 0; n < N; ++n) P += p[int64_t(n) * E + e];
      P /= N;
      f[e] = total ? double(counts[e]) / double(total) : 0.0;
      lb += f[e] * P;
    }
    lb *= E;
    for (int n = 0; n < N; ++n) {
      double l = lse.dev_ptr<T>()[n];
      z += l * l;
      for (int e = 0; e < E; ++e) {
        double q = p[int64_t(n) * E + e];
        if (q > 0) kl += q * std::log(q * E);
      }
    }
    z /= N;
    kl /= N;
    r.lb = lb;
    r.z = z;
    r.kl = kl;
    r.assignments = total;
    r.aux.val.dev_ptr<T>()[0] = T(opt.lb_coef * lb + opt.z_coef * z - opt.kl_coef * kl);
  });
  r.ids = ids;
  r.counts = counts;
  if (r.weights.requires_grad()) {
    Var lg = logits, w = r.weights, aux = r.aux;
    Tensor probs = r.probs;
    Arena* ap = &arena;
    RouterOptions o = opt;
    tape.record("router", [=] {
      dispatch(lg.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* p = probs.dev_ptr<T>();
        double ga = aux.grad.dev_ptr<T>()[0];
        // d aux / d probs: load balance E f_e / N per token; -KL gives -(log(q E) + 1) / N.
        T* dp = ap->alloc_n<T>(size_t(N) * E);
        T* dl = ap->alloc_n<T>(N);
        for (int n = 0; n < N; ++n) {
          for (int e = 0; e < E; ++e) {
            double q = p[int64_t(n) * E + e];
            double g = o.lb_coef * E * f[e] / N;
            if (o.kl_coef != 0 && q > 0) g -= o.kl_coef * (std::log(q * E) + 1.0) / N;
            dp[int64_t(n) * E + e] = T(ga * g);
          }
          dl[n] = T(ga * o.z_coef * 2.0 * lse.dev_ptr<T>()[n] / N);
        }
        cpu::router_backward<T>(lg.grad.dev_ptr<T>(), w.grad.dev_ptr<T>(), dp, dl, p, ids, N, E, K,
                                o.renormalize);
      });
    });
  }
  return r;
}

Var gather_rows(Tape& tape, const Var& x, const int* rows, int M) {
  int C = int(x.shape()[-1]);
  Var out = tape.make({M, C}, x.dtype(), x.requires_grad());
  with_kernels(x.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.gather_rows_forward(ctx, out.val.dev_ptr<T>(), x.val.dev_ptr<T>(), rows, M, C);
  });
  if (out.requires_grad())
    tape.record("gather_rows", [=] {
      with_kernels(x.val, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.gather_rows_backward(ctx, x.grad.dev_ptr<T>(), out.grad.dev_ptr<T>(), rows, M, C);
      });
    });
  return out;
}

Var scatter_add_rows(Tape& tape, const Var& y, const Var* w, const int* tok, const int* widx, int N) {
  int C = int(y.shape()[-1]), M = int(y.val.numel() / C);
  Var wv = w ? *w : Var{};
  bool needs = y.requires_grad() || (w && w->requires_grad());
  Var out = tape.make({N, C}, y.dtype(), needs);
  with_kernels(y.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.fill(ctx, out.val.dev_ptr<T>(), T(0), int64_t(N) * C);
    k.scatter_add_rows_forward(ctx, out.val.dev_ptr<T>(), y.val.dev_ptr<T>(), dev_or_null<T>(wv.val), tok, widx,
                               M, C);
  });
  if (out.requires_grad())
    tape.record("scatter_add_rows", [=] {
      with_kernels(y.val, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.scatter_add_rows_backward(ctx, dev_or_null<T>(y.grad), dev_or_null<T>(wv.grad), out.grad.dev_ptr<T>(),
                                    y.val.dev_ptr<T>(), dev_or_null<T>(wv.val), tok, widx, M, C);
      });
    });
  return out;
}

Var grouped_linear(Tape& tape, const Var& x, const Var& w, const int* offsets) {
  ANYK_CHECK(w.shape().ndim == 3, "grouped_linear expects w (E,O,I), got " << w.shape().str());
  int E = int(w.shape()[0]), O = int(w.shape()[1]), I = int(w.shape()[2]);
  int M = int(x.val.numel() / I);
  ANYK_CHECK(x.shape()[-1] == I && offsets[0] == 0 && offsets[E] == M,
             "grouped_linear: x " << x.shape().str() << " does not match w " << w.shape().str()
                                  << " and offsets [0.." << offsets[E] << "]");
  Var out = tape.make({M, O}, x.dtype(), any_grad({&x, &w}));
  with_kernels(x.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.grouped_linear_forward(ctx, out.val.dev_ptr<T>(), x.val.dev_ptr<T>(), w.val.dev_ptr<T>(), offsets, E, I, O);
  });
  if (out.requires_grad())
    tape.record("grouped_linear", [=] {
      with_kernels(x.val, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.grouped_linear_backward(ctx, dev_or_null<T>(x.grad), dev_or_null<T>(w.grad), out.grad.dev_ptr<T>(),
                                  x.val.dev_ptr<T>(), w.val.dev_ptr<T>(), offsets, E, I, O);
      });
    });
  return out;
}

}  // namespace anyk
