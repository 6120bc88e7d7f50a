// The token dispatcher: owns every permutation and all of the communication between the
// router's choices and the experts' contiguous row blocks.
// permute: (N,C) tokens + (N,K) expert ids -> rows grouped by local expert (+ tokens_per_expert).
// unpermute: expert outputs -> weighted scatter-add back to (N,C); router weights never travel.
// Both are differentiable: their backward is the dual permutation (and exchange).
#pragma once
#include <string>

#include "parallel/communicator.h"
#include "parallel/dispatch_plan.h"
#include "runtime/tape.h"

namespace anyk {

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  virtual int num_experts() const = 0;    // E, global
  virtual int num_local() const = 0;      // E_local
  virtual int first_expert() const = 0;   // global id of local expert 0
  // x (N,C), ids I32 (N,K) host, -1 for unused slots -> rows (plan.rows, C) by local expert.
  // The plan is built on the host; its row indices move to x's device in one packed copy
  // (upload_plan, parallel/dispatch_plan.h) before any kernel reads them.
  virtual Var permute(Tape& tape, const Var& x, const Tensor& ids, DispatchPlan& plan) = 0;
  // y (plan.rows, C) in the order permute produced, weights (N,K) -> out (N,C).
  virtual Var unpermute(Tape& tape, const Var& y, const Var& weights, const DispatchPlan& plan) = 0;
};

// How rows travel between the ranks of the expert-parallel group (--a2a).
enum class A2A { Flat, Hier };
A2A parse_a2a(const std::string& name);  // "flat" | "hier"; the error lists both
const char* a2a_name(A2A mode);

// Experts split evenly over the P ranks of the ep group (rank r holds [r*El, (r+1)*El)).
// permute: sort the N*K assignments by expert (= by destination) -> exchange_counts sizes the
// receive buffers (in the step arena: they resize every step with K) -> upload the plan's row
// indices -> gather the rows in send order -> exchange them -> regroup by local expert.
// Host synchronisations: the ids reach the host once per layer (MoELayer::forward, the one
// device -> host copy of a layer, pinned by tests/test_checked_device.cpp); the counts exchange
// works on the host counts made from them, so it waits on the other ranks, never on the device.
// With --comm mpi off the CPU the rows are staged through the host as well (parallel/comm.cpp),
// one copy per exchange; --comm nccl moves them on the device.
// unpermute: the reverse exchange, then the weighted scatter-add on the source rank.
// Flat: one all-to-all over the ep group (P-1 peers per rank). Hier (Tutel's 2D all-to-all,
// docs/hier-a2a.md): phase 1 inside the node, phase 2 among the ranks with the same local index
// on every node ((G-1) + (M-1) peers); the rows reach the experts in exactly the flat order.
// On one rank nothing travels and permute is the sort plus one gather.
class AllToAllDispatcher : public Dispatcher {
 public:
  // Flat all-to-all over ep.
  AllToAllDispatcher(const Communicator& ep, int num_experts);
  // Hierarchical: node = the G ep ranks on this node, cross = the M ep ranks with this rank's
  // local index, one per node; needs ep rank = cross rank * G + node rank (make_node_groups).
  AllToAllDispatcher(const Communicator& ep, const Communicator& node, const Communicator& cross,
                     int num_experts);
  int num_experts() const override { return E_; }
  int num_local() const override { return E_local_; }
  int first_expert() const override { return ep_->rank() * E_local_; }
  Var permute(Tape& tape, const Var& x, const Tensor& ids, DispatchPlan& plan) override;
  Var unpermute(Tape& tape, const Var& y, const Var& weights, const DispatchPlan& plan) override;
  A2A mode() const { return node_ ? A2A::Hier : A2A::Flat; }

  // Time spent in the count and row exchanges since the last reset (seconds), for --profile:
  // the forward exchanges and the backward ones (the row exchanges' adjoints, run by the tape).
  double exchange_seconds() const { return exchange_s_; }
  void reset_timers() { exchange_s_ = 0; }

 private:
  Tensor exchange_counts(Arena& a, const Tensor& expert_counts, Tensor* mid);
  Var send_rows(Tape& tape, const Var& send, const DispatchPlan& plan);
  Var return_rows(Tape& tape, const Var& back, const DispatchPlan& plan);

  const Communicator* ep_;
  const Communicator* node_ = nullptr;   // hier only
  const Communicator* cross_ = nullptr;  // hier only
  int E_, E_local_;
  double exchange_s_ = 0;
};

// One process holds every expert: the one-rank case (a LocalCommunicator, no MPI).
class LocalDispatcher final : public AllToAllDispatcher {
 public:
  explicit LocalDispatcher(int num_experts);
};

}  // namespace anyk
