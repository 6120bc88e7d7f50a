// The MoE layer as three parts with Megatron-shaped boundaries: Router (logits -> top-K ids and
// weights, aux losses), Experts (SwiGLU per local expert over its contiguous rows) and the
// Dispatcher (permute / unpermute, possibly across ranks) that connects them.
#pragma once
#include <string>
#include <vector>

#include "model/moe_ops.h"
#include "parallel/dispatcher.h"
#include "runtime/ops/ops.h"
#include "runtime/params.h"

namespace anyk {

struct RouterOut {
  Var weights;        // (N,K) gate weights; 0 in unused slots
  Tensor ids;         // I32 (N,K) chosen experts, best first; -1 in unused slots
  Tensor probs;       // (N,E) softmax over all experts
  Var aux;            // (1) lb_coef*lb + z_coef*z + kl_coef*(-KL)
  Tensor counts;      // I32 (E) assignments per expert
  Tensor lb, z, kl;   // F64 (1) each, the unweighted loss values, on the router's device (for
                      // logging: nothing here is read back to the host)
};
// Routing as the MoE layer runs it: logits (N,E) -> router_gating, then the load-balance, z and
// KL losses (moe_ops.h) combined into aux in the logits' dtype.
RouterOut router(Tape& tape, const Var& logits, int K, const RouterOptions& opt);

class Router {
 public:
  Router(ParamStore& ps, const std::string& prefix, int C, int E);
  // x (N,C) -> routing with K slots per token
  RouterOut forward(Tape& tape, const Var& x, int K, const RouterOptions& opt) const;
  int weight_id() const { return w_; }

 private:
  ParamStore* ps_;
  int w_;  // (E,C)
};

class Experts {
 public:
  Experts(ParamStore& ps, const std::string& prefix, int E_local, int C, int H);
  // rows (R,C) grouped by local expert (offsets I32 (E_local+1), host memory) -> (R,C)
  // segments: DispatchPlan::segments (undefined on one rank); see grouped_linear.
  Var forward(Tape& tape, const Var& rows, const Tensor& offsets, const Tensor& segments = {}) const;
  int w13_id() const { return w13_; }
  int w2_id() const { return w2_; }

 private:
  ParamStore* ps_;
  int w13_;  // (E_local, 2H, C)  [gate | up]
  int w2_;   // (E_local, C, H)
};

struct MoEStats {
  bool capture = false;      // in: also copy the router's probabilities and choices (analysis)
  std::vector<float> probs;  // (N,E) when captured
  std::vector<int> ids;      // (N,K) when captured, -1 in unused slots
  double lb = 0, z = 0, kl = 0;  // read back by LM::forward in one copy for all layers
  Tensor lb_t, z_t, kl_t;        // F64 (1) on the device, until then
  int64_t assignments = 0;   // routed (token, expert) pairs on this rank
  std::vector<int> counts;   // (E) assignments per global expert on this rank's tokens
};

// Host synchronisations of MoELayer::forward (blocking device -> host copies): ONE, the routed
// ids (N,K), which the dispatch plan is built from (the counts exchange on several ranks uses the
// counts made from them on the host). With MoEStats::capture also the ids and probabilities again.
// Everything else it reports stays on the device until LM::forward reads all layers at once.
// tests/test_checked_device.cpp pins this count.
class MoELayer {
 public:
  MoELayer(ParamStore& ps, const std::string& prefix, int C, int H, Dispatcher& d);
  // x (N,C) -> (N,C), with K experts per token; aux gets this layer's auxiliary loss (1)
  Var forward(Tape& tape, const Var& x, int K, const RouterOptions& opt, Var* aux, MoEStats* st) const;
  const Router& router() const { return router_; }
  const Experts& experts() const { return experts_; }

 private:
  Dispatcher* d_;
  Router router_;
  Experts experts_;
};

}  // namespace anyk
