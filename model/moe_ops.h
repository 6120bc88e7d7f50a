// The MoE ops and their gradient rules. The router is split as Megatron's router.py splits it:
// gating (softmax, top-K or top-p, EMoE sampling, per-expert counts), then the auxiliary losses
// (load balance, z, hierarchical KL) as separate differentiable ops, combined by router_aux.
// model/moe.h composes them. Plus the per-expert grouped matmul. Routing ids and counts are I32
// tensors. Ops work in f32 and f64; the loss ops keep their scalars in f64.
#pragma once
#include <cstdint>
#include <string_view>

#include "runtime/tape.h"

namespace anyk {

// model/'s differentiable ops (registered with the tape from moe_ops.cpp; see runtime/tape.h).
inline constexpr std::string_view kModelOps[] = {"router",         "router_lb_loss", "router_z_loss",
                                                 "router_kl_loss", "router_aux",     "grouped_linear"};

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

struct Gating {
  Var weights;    // (N,K) gate weights; 0 in unused slots
  Var probs;      // (N,E) softmax over all experts; its gradient is f64 whatever the dtype, so
                  // the load-balance and KL gradients meet unrounded (rounded once in backward)
  Var lse;        // (N) logsumexp of the logits (input of the z loss)
  Tensor ids;     // I32 (N,K) chosen experts, best first; -1 in unused slots
  Tensor counts;  // I32 (E) assignments per expert
};
// The gating op "router": logits (N,E) -> softmax over all E, the top-K experts and their
// weights (renormalised over the chosen when opt.renormalize); under opt.top_p a per-token K in
// [min(k_min, K), K]; when opt.pool > K, K experts drawn from the top-pool (EMoE). Gradients
// reach the logits through weights, probs and lse.
Gating router_gating(Tape& tape, const Var& logits, int K, const RouterOptions& opt);

// The auxiliary losses, unweighted, each an f64 scalar (1).
// Load balance E * sum_e f_e P_e: probs (N,E), counts I32 (E) (f_e = counts / sum, no gradient).
Var router_lb_loss(Tape& tape, const Var& probs, const Tensor& counts);
// z loss: mean of lse (N) squared.
Var router_z_loss(Tape& tape, const Var& lse);
// KL(q || U) = mean over tokens of sum_e q log(q E), probs (N,E).
Var router_kl_loss(Tape& tape, const Var& probs);
// The router's aux loss (1) of dtype dt: lb_coef * lb + z_coef * z - kl_coef * kl from three
// scalars (1) of one dtype (f64 from the loss ops), computed in that dtype and rounded once.
Var router_aux(Tape& tape, const Var& lb, const Var& z, const Var& kl, const RouterOptions& opt,
               DType dt);

// top_p for one token: the smallest k whose largest-k probabilities sum to >= p, clamped to
// [k_min, k_max]. probs: (E), need not be sorted; NaN entries count as zero mass.
template <class T> int top_p_count(const T* probs, int E, double p, int k_min, int k_max);

// Per-expert matmul: x (M,I), w (E,O,I), rows offsets[e]..offsets[e+1] use w[e] -> (M,O)
// segments (optional, host I32 (E*S + 1)): the rows of each expert split by source rank
// (DispatchPlan::segments); each segment is then its own product, and the weight gradient sums
// the segments in a fixed tree, so that the bits match one rank's micro-batches.
Var grouped_linear(Tape& tape, const Var& x, const Var& w, const Tensor& offsets, const Tensor& segments = {});

}  // namespace anyk
