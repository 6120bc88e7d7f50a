// The token dispatcher: owns every permutation (and, in the MPI implementation, all of the
// communication) between the router's choices and the experts' contiguous row blocks.
// permute: (N,C) tokens + (N,K) expert ids -> rows grouped by local expert (+ tokens_per_expert).
// unpermute: expert outputs -> weighted scatter-add back to (N,C); router weights never travel.
// Both are differentiable: their backward is the dual permutation (and exchange).
#pragma once
#include "runtime/tape.h"

namespace anyk {

struct DispatchPlan {
  int N = 0, K = 0;             // tokens and slots per token on this rank
  int rows = 0;                 // rows delivered to this rank's local experts
  const int* offsets = nullptr; // (E_local+1) row offsets of each local expert's block
  const int* counts = nullptr;  // (E_local) rows per local expert (tokens_per_expert)
  // Local bookkeeping: for the rows this rank sends, in send order.
  int sent = 0;                 // number of routed assignments (ids >= 0) on this rank
  const int* send_tok = nullptr;   // (sent) source token of each routed assignment
  const int* send_slot = nullptr;  // (sent) its flat slot n*K + k (index into the weights)
  void* impl = nullptr;         // implementation-specific state (arena memory)
};

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  virtual int num_experts() const = 0;    // E, global
  virtual int num_local() const = 0;      // E_local
  virtual int first_expert() const = 0;   // global id of local expert 0
  // x (N,C), ids (N,K) with -1 for unused slots -> rows (plan.rows, C) grouped by local expert.
  virtual Var permute(Tape& tape, const Var& x, const int* ids, int N, int K, DispatchPlan& plan) = 0;
  // y (plan.rows, C) in the order permute produced, weights (N,K) -> out (N,C).
  virtual Var unpermute(Tape& tape, const Var& y, const Var& weights, const DispatchPlan& plan) = 0;
};

// One process holds every expert: permute is a counting sort plus a row gather.
class LocalDispatcher final : public Dispatcher {
 public:
  explicit LocalDispatcher(int num_experts);
  int num_experts() const override { return E_; }
  int num_local() const override { return E_; }
  int first_expert() const override { return 0; }
  Var permute(Tape& tape, const Var& x, const int* ids, int N, int K, DispatchPlan& plan) override;
  Var unpermute(Tape& tape, const Var& y, const Var& weights, const DispatchPlan& plan) override;

 private:
  int E_;
};

// Sort the routed assignments of ids (N,K) by expert, stably (token order within an expert).
// Writes send_tok/send_slot (sent) and per-expert counts (E); `next` is scratch (E). Returns
// `sent`. Shared by every dispatcher implementation.
int sort_assignments(const int* ids, int N, int K, int E, int* send_tok, int* send_slot, int* counts,
                     int* next);

}  // namespace anyk
