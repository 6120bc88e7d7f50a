// The single-process dispatcher: counting sort by expert, then gather (permute) and weighted
// scatter-add (unpermute), both differentiable ops from the runtime.
#include <algorithm>

#include "parallel/dispatcher.h"
#include "runtime/ops/ops.h"

namespace anyk {

int sort_assignments(const int* ids, int N, int K, int E, int* send_tok, int* send_slot, int* counts,
                     int* next) {
  std::fill(counts, counts + E, 0);
  int64_t NK = int64_t(N) * K;
  for (int64_t i = 0; i < NK; ++i) {
    int e = ids[i];
    if (e < 0) continue;
    ANYK_CHECK(e < E, "router chose expert " << e << " but there are only " << E);
    ++counts[e];
  }
  // Exclusive prefix sums give each expert's first row; then place assignments in order.
  int run = 0;
  for (int e = 0; e < E; ++e) {
    next[e] = run;
    run += counts[e];
  }
  for (int64_t i = 0; i < NK; ++i) {
    int e = ids[i];
    if (e < 0) continue;
    int r = next[e]++;
    send_tok[r] = int(i / K);
    send_slot[r] = int(i);
  }
  return run;
}

LocalDispatcher::LocalDispatcher(int num_experts) : E_(num_experts) {
  ANYK_CHECK(E_ >= 1, "dispatcher needs at least one expert, got " << E_);
}

Var LocalDispatcher::permute(Tape& tape, const Var& x, const int* ids, int N, int K, DispatchPlan& plan) {
  Arena& a = tape.arena();
  int* tok = a.alloc_n<int>(size_t(N) * K + 1);
  int* slot = a.alloc_n<int>(size_t(N) * K + 1);
  int* counts = a.alloc_n<int>(E_);
  int* offsets = a.alloc_n<int>(E_ + 1);
  int sent = sort_assignments(ids, N, K, E_, tok, slot, counts, a.alloc_n<int>(E_));
  offsets[0] = 0;
  for (int e = 0; e < E_; ++e) offsets[e + 1] = offsets[e] + counts[e];
  plan = DispatchPlan{};
  plan.N = N;
  plan.K = K;
  plan.rows = sent;
  plan.offsets = offsets;
  plan.counts = counts;
  plan.sent = sent;
  plan.send_tok = tok;
  plan.send_slot = slot;
  return gather_rows(tape, x, tok, sent);  // (N,C) -> (rows, C) grouped by expert
}

Var LocalDispatcher::unpermute(Tape& tape, const Var& y, const Var& weights, const DispatchPlan& plan) {
  // (rows, C) -> (N, C): out[tok] += w[slot] * y[row]
  return scatter_add_rows(tape, y, &weights, plan.send_tok, plan.send_slot, plan.N);
}

}  // namespace anyk
