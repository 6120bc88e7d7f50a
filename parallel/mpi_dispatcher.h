// The expert-parallel dispatcher: experts are split evenly over the ranks of the ep group.
// permute: sort the N*K assignments by expert -> per-destination counts -> exchange counts
// (MPI_Alltoall) -> size the receive buffers from the counts (in the step arena: this is where
// the buffers resize every step with K) -> exchange rows (MPI_Alltoallv) -> regroup by local
// expert. unpermute: the reverse exchange, then the weighted scatter-add on the source rank
// (router weights never travel).
#pragma once
#include "parallel/comm.h"
#include "parallel/dispatcher.h"

namespace anyk {

class MpiDispatcher final : public Dispatcher {
 public:
  MpiDispatcher(const Comm& ep, int num_experts);
  int num_experts() const override { return E_; }
  int num_local() const override { return E_local_; }
  int first_expert() const override { return comm_->rank() * E_local_; }
  Var permute(Tape& tape, const Var& x, const int* ids, int N, int K, DispatchPlan& plan) override;
  Var unpermute(Tape& tape, const Var& y, const Var& weights, const DispatchPlan& plan) override;

  // Time spent in the count and row exchanges since the last reset (seconds), for --profile.
  double exchange_seconds() const { return exchange_s_; }
  void reset_timers() { exchange_s_ = 0; }

 private:
  const Comm* comm_;
  int E_, E_local_;
  double exchange_s_ = 0;
};

}  // namespace anyk
