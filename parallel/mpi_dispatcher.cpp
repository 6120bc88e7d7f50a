// MpiDispatcher; see mpi_dispatcher.h.
#include "parallel/mpi_dispatcher.h"

#include <vector>

#include "parallel/all_to_all.h"
#include "runtime/ops/ops.h"

namespace anyk {

namespace {
struct MpiPlan {
  int* send_counts;  // (P) rows to each rank
  int* recv_counts;  // (P) rows from each rank
  int* inverse;      // (rows) expert-major row -> source-major position, inverted
};
}  // namespace

MpiDispatcher::MpiDispatcher(const Comm& ep, int num_experts) : comm_(&ep), E_(num_experts) {
  ANYK_CHECK(E_ % ep.size() == 0, "experts " << E_ << " do not divide over " << ep.size()
                                             << " expert-parallel ranks. hint: pick --ep dividing --experts");
  E_local_ = E_ / ep.size();
}

Var MpiDispatcher::permute(Tape& tape, const Var& x, const int* ids, int N, int K, DispatchPlan& plan) {
  Arena& a = tape.arena();
  const int P = comm_->size(), El = E_local_;
  int* tok = a.alloc_n<int>(size_t(N) * K + 1);
  int* slot = a.alloc_n<int>(size_t(N) * K + 1);
  int* counts = a.alloc_n<int>(E_);
  int sent = sort_assignments(ids, N, K, E_, tok, slot, counts, a.alloc_n<int>(E_));
  // Per-destination counts: experts [r*El, (r+1)*El) live on rank r, so the sort by expert is
  // also a sort by destination.
  auto* mp = a.alloc_n<MpiPlan>(1);
  mp->send_counts = a.alloc_n<int>(P);
  mp->recv_counts = a.alloc_n<int>(P);
  for (int r = 0; r < P; ++r) {
    mp->send_counts[r] = 0;
    for (int e = 0; e < El; ++e) mp->send_counts[r] += counts[r * El + e];
  }
  double t0 = MPI_Wtime();
  // recv[s*El + e]: rows source s sends to local expert e.
  std::vector<int> recv = comm_->all_to_all(std::vector<int>(counts, counts + E_));
  exchange_s_ += MPI_Wtime() - t0;
  int* local_counts = a.alloc_n<int>(El);
  int* offsets = a.alloc_n<int>(El + 1);
  int* src_off = a.alloc_n<int>(P + 1);
  src_off[0] = 0;
  for (int s = 0; s < P; ++s) {
    mp->recv_counts[s] = 0;
    for (int e = 0; e < El; ++e) mp->recv_counts[s] += recv[s * El + e];
    src_off[s + 1] = src_off[s] + mp->recv_counts[s];
  }
  int rows = src_off[P];
  offsets[0] = 0;
  for (int e = 0; e < El; ++e) {
    local_counts[e] = 0;
    for (int s = 0; s < P; ++s) local_counts[e] += recv[s * El + e];
    offsets[e + 1] = offsets[e] + local_counts[e];
  }
  // The received buffer is source-major (and expert-major within a source); the experts want
  // expert-major. regroup[j] = source-major position of expert-major row j.
  int* regroup = a.alloc_n<int>(size_t(rows) + 1);
  mp->inverse = a.alloc_n<int>(size_t(rows) + 1);
  int j = 0;
  for (int e = 0; e < El; ++e)
    for (int s = 0; s < P; ++s) {
      int p0 = src_off[s];
      for (int e2 = 0; e2 < e; ++e2) p0 += recv[s * El + e2];
      for (int i = 0; i < recv[s * El + e]; ++i, ++j) {
        regroup[j] = p0 + i;
        mp->inverse[p0 + i] = j;
      }
    }
  Var send = gather_rows(tape, x, tok, sent);                       // (N,C) -> (sent,C) by expert
  t0 = MPI_Wtime();
  Var got = all_to_all_rows(tape, send, mp->send_counts, mp->recv_counts, *comm_);  // -> (rows,C)
  exchange_s_ += MPI_Wtime() - t0;
  plan = DispatchPlan{};
  plan.N = N;
  plan.K = K;
  plan.rows = rows;
  plan.offsets = offsets;
  plan.counts = local_counts;
  plan.sent = sent;
  plan.send_tok = tok;
  plan.send_slot = slot;
  plan.impl = mp;
  return gather_rows(tape, got, regroup, rows);  // source-major -> expert-major
}

Var MpiDispatcher::unpermute(Tape& tape, const Var& y, const Var& weights, const DispatchPlan& plan) {
  auto* mp = static_cast<const MpiPlan*>(plan.impl);
  Var back = gather_rows(tape, y, mp->inverse, plan.rows);  // expert-major -> source-major
  double t0 = MPI_Wtime();
  Var ret = all_to_all_rows(tape, back, mp->recv_counts, mp->send_counts, *comm_);  // -> (sent,C)
  exchange_s_ += MPI_Wtime() - t0;
  return scatter_add_rows(tape, ret, &weights, plan.send_tok, plan.send_slot, plan.N);
}

}  // namespace anyk
