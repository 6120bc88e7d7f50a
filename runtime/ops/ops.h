// Differentiable ops. Each returns a Var allocated from the tape's arena and records its backward
// closure (which adds into the inputs' gradients). The backward rule of every op sits next to its
// forward in the .cpp beside this header. Ops work in f32 and f64 (the gradient checks use f64),
// on any device with registered kernels (kernels/kernels.h); they never read device data.
#pragma once
#include "runtime/tape.h"

namespace anyk {

// ids (N, i32, on wte's device) -> (N,C) rows of wte (V,C)
Var embedding(Tape& tape, const Tensor& ids, const Var& wte);
// The same from host ids (copied to wte's device when it is not the CPU)
Var embedding(Tape& tape, const int* ids, int N, const Var& wte);
// x (...,I) · w (O,I)^T -> (...,O)
Var linear(Tape& tape, const Var& x, const Var& w);
// a + b (same shape)
Var add(Tape& tape, const Var& a, const Var& b);
// s * a
Var scale(Tape& tape, const Var& a, double s);
// RMSNorm over the last dim: x (...,C), w (C)
Var rmsnorm(Tape& tape, const Var& x, const Var& w, double eps = 1e-5);
// Rotary embedding of the first nrot heads of x (B,T,NHx,D)
Var rope(Tape& tape, const Var& x, int nrot, double theta);
// Causal self-attention: qkv (B,T,3C) -> (B,T,C)
Var attention(Tape& tape, const Var& qkv, int NH);
// SwiGLU: h (M,2H) = [gate | up] -> (M,H)
Var swiglu(Tape& tape, const Var& h);
// Mean (or sum / norm when norm > 0) of -log softmax(logits)[target]: logits (N,V) -> scalar (1)
// targets (N, i32, on the logits' device)
Var cross_entropy(Tape& tape, const Var& logits, const Tensor& targets, double norm = 0);
// The same from host targets (copied to the logits' device when it is not the CPU)
Var cross_entropy(Tape& tape, const Var& logits, const int* targets, double norm = 0);

struct RouterOptions {
  bool renormalize = true;  // weights renormalised over the chosen experts
  double lb_coef = 0.01;    // Switch load-balance loss E * sum_e f_e P_e
  double z_coef = 0.001;    // mean logsumexp^2
  double kl_coef = 0.0;     // EMoE hierarchical router loss -KL(q || U)
  double top_p = 0.0;       // > 0: per-token K = smallest k with top-k mass >= top_p
  int k_min = 1;            // lower clamp of the per-token K under top_p
  // EMoE stochastic co-activation: when pool > K, each token computes K experts drawn uniformly
  // without replacement from its top-`pool` experts (keyed by sample_key and the token index).
  int pool = 0;
  uint64_t sample_key = 0;
};

struct RouterOut {
  Var weights;           // (N,K) gate weights; 0 in unused slots
  const int* ids;        // (N,K) chosen experts, best first; -1 in unused slots
  Tensor probs;          // (N,E) softmax over all experts
  Var aux;               // (1) lb_coef*lb + z_coef*z + kl_coef*(-KL)
  const int* counts;     // (E) assignments per expert
  int64_t assignments;   // sum of counts
  double lb, z, kl;      // the unweighted loss values, for logging
};
// top_p: the smallest k whose largest-k probabilities sum to >= p, clamped to [k_min, k_max].
// probs: (E), need not be sorted; NaN entries count as zero mass. The router calls it per token.
template <class T> int top_p_count(const T* probs, int E, double p, int k_min, int k_max);

// The router op: logits (N,E) -> top-K routing and the auxiliary losses.
RouterOut router(Tape& tape, const Var& logits, int K, const RouterOptions& opt);

// out (M,C) = x[rows[m]]; backward scatter-adds. (The permutation's gather half.)
Var gather_rows(Tape& tape, const Var& x, const int* rows, int M);
// out (N,C) = sum over m with tok[m] = n of w[widx[m]] * y[m]; w may be null (weight 1).
// (The permutation's scatter half; its dual is gather_rows.)
Var scatter_add_rows(Tape& tape, const Var& y, const Var* w, const int* tok, const int* widx, int N);
// Per-expert matmul: x (M,I), w (E,O,I), rows offsets[e]..offsets[e+1] use w[e] -> (M,O)
Var grouped_linear(Tape& tape, const Var& x, const Var& w, const int* offsets);

}  // namespace anyk
