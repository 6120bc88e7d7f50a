// CPU kernels of the router beyond gating (router_forward / router_backward in kernels.h): the
// per-token top-p count, EMoE pool sampling, per-expert counts, and the auxiliary losses
// (load balance, z, hierarchical KL) with their combination into one scalar. Same conventions as
// kernels.h: outputs first, raw pointers and sizes, never allocating (scratch is passed in),
// backward kernels ADD into their gradient outputs. Losses are accumulated and returned in double
// whatever T is (they are small sums the model logs).
// Legend: N tokens, E experts, K slots per token, P EMoE pool size.
#pragma once
#include <cstdint>

namespace anyk::cpu {

// kcount (N): for each row of probs (N,E), the smallest k whose k largest probabilities sum to
// >= p, clamped to [k_min, k_max] (1 <= k_min <= k_max <= E, 0 < p <= 1). NaN counts as zero
// mass. scratch: E doubles.
template <class T>
void top_p_count_forward(int* kcount, double* scratch, const T* probs, int N, int E, double p,
                         int k_min, int k_max);

// EMoE stochastic co-activation. pool_ids (N,P): each token's top-P experts, best first (the ids
// of router_forward with K = P). ids (N,K), weights (N,K): K of the P drawn uniformly without
// replacement (a partial Fisher-Yates over pool slots, draw j of token n from
// hash_key(key, n, j)), kept in pool (probability) order; weights are their probabilities from
// probs (N,E), renormalised over the K when renorm. Needs K <= P <= 64.
template <class T>
void emoe_sample_forward(int* ids, T* weights, const T* probs, const int* pool_ids, int N, int E,
                         int K, int P, uint64_t key, bool renorm);

// counts (E): how many of the n entries of ids equal each expert; negative ids (unused slots)
// are skipped.
void expert_counts(int* counts, const int* ids, int64_t n, int E);

// The auxiliary losses, unweighted, each an f64 scalar out (1). Their gradients go to a G
// buffer: the router keeps its probabilities' gradient in f64 so that the load-balance and KL
// contributions meet unrounded (G = T in the gradient checks).
// Switch load balance lb = E * sum_e f_e P_e with f_e = counts[e] / sum(counts) (0 when no
// assignment; no gradient) and P_e = mean over n of probs (N,E).
template <class T>
void lb_loss_forward(double* out, const T* probs, const int* counts, int N, int E);
// dprobs (N,E) += dout[0] * E * f_e / N
template <class G>
void lb_loss_backward(G* dprobs, const double* dout, const int* counts, int N, int E);

// z loss z = mean over n of lse[n]^2, lse (N) the router's logsumexp.
template <class T> void z_loss_forward(double* out, const T* lse, int N);
// dlse (N) += dout[0] * 2 lse[n] / N
template <class T> void z_loss_backward(T* dlse, const double* dout, const T* lse, int N);

// KL(q || U) = mean over n of sum_e q log(q E), over the entries q > 0 of probs (N,E).
template <class T> void kl_loss_forward(double* out, const T* probs, int N, int E);
// dprobs (N,E) += dout[0] * (log(q E) + 1) / N where q > 0 (nothing when dout[0] == 0)
template <class T, class G>
void kl_loss_backward(G* dprobs, const double* dout, const T* probs, int N, int E);

// The router's auxiliary loss out (1) = T(cl * lb + cz * z - ck * kl) from three scalars (1) of
// type S, in S. Backward: dlb += dout * cl, dz += dout * cz, dkl -= dout * ck (null: not needed).
template <class T, class S>
void router_aux_forward(T* out, const S* lb, const S* z, const S* kl, double cl, double cz, double ck);
template <class T, class S>
void router_aux_backward(S* dlb, S* dz, S* dkl, const T* dout, double cl, double cz, double ck);

// out (n) = T(in (n)): dtype conversion (the router's f64 probability gradient to T).
template <class T, class S> void convert(T* out, const S* in, int64_t n);

}  // namespace anyk::cpu
