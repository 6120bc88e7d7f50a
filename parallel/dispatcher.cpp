// AllToAllDispatcher (flat and hierarchical) and LocalDispatcher; see dispatcher.h.
#include "parallel/dispatcher.h"

#include <chrono>

#include "parallel/all_to_all.h"
#include "runtime/ops/ops.h"

namespace anyk {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
const int* idx(const Tensor& t) { return t.ptr<int32_t>(); }  // host counts only
}  // namespace

A2A parse_a2a(const std::string& name) {
  if (name == "flat") return A2A::Flat;
  if (name == "hier") return A2A::Hier;
  ANYK_FAIL("--a2a '" << name << "' is not an all-to-all algorithm hint: use flat or hier");
}

const char* a2a_name(A2A mode) { return mode == A2A::Hier ? "hier" : "flat"; }

AllToAllDispatcher::AllToAllDispatcher(const Communicator& ep, int num_experts) : ep_(&ep), E_(num_experts) {
  ANYK_CHECK(E_ >= 1, "dispatcher needs at least one expert, got " << E_);
  ANYK_CHECK(E_ % ep.size() == 0, "experts " << E_ << " do not divide over " << ep.size()
                                             << " expert-parallel ranks. hint: pick --ep dividing --experts");
  E_local_ = E_ / ep.size();
}

AllToAllDispatcher::AllToAllDispatcher(const Communicator& ep, const Communicator& node,
                                       const Communicator& cross, int num_experts)
    : AllToAllDispatcher(ep, num_experts) {
  ANYK_CHECK(node.size() * cross.size() == ep.size() && ep.rank() == cross.rank() * node.size() + node.rank(),
             "hierarchical all-to-all: ep rank " << ep.rank() << " of " << ep.size() << " is not node rank "
                                                 << node.rank() << " of " << node.size() << " on node "
                                                 << cross.rank() << " of " << cross.size()
                                                 << ". hint: build the groups with make_node_groups");
  node_ = &node;
  cross_ = &cross;
}

// The counts exchange: every rank learns how many rows it will receive for each local expert
// from each source, which sizes the receive buffers before any row moves. Host counts in, host
// counts out (no device copy: the counts come from the host ids the plan is built from).
// expert_counts (E) -> recv (P*El): rows source s sends to local expert e at s*El + e. Hier
// routes the counts as it routes the rows (phase 1 in the node, phase 2 across nodes) and keeps
// phase 1's counts in *mid (G*M*El) for plan_hier.
Tensor AllToAllDispatcher::exchange_counts(Arena& a, const Tensor& expert_counts, Tensor* mid) {
  const int P = ep_->size(), El = E_local_;
  Tensor recv = arena_i32(a, int64_t(P) * El);
  if (!node_) {
    ep_->all_to_all(expert_counts, recv);
    return recv;
  }
  const int G = node_->size(), M = cross_->size();
  const int* c = idx(expert_counts);
  Tensor send1 = arena_i32(a, int64_t(P) * El), send2 = arena_i32(a, int64_t(P) * El);
  *mid = arena_i32(a, int64_t(P) * El);
  int* s1 = send1.ptr<int32_t>();
  for (int l = 0, i = 0; l < G; ++l)  // to node rank l: the counts for local index l of each node
    for (int m = 0; m < M; ++m)
      for (int e = 0; e < El; ++e) s1[i++] = c[(m * G + l) * El + e];
  node_->all_to_all(send1, *mid);  // mid[(g*M + m)*El + e], from node rank g
  const int* md = idx(*mid);
  int* s2 = send2.ptr<int32_t>();
  for (int m = 0, i = 0; m < M; ++m)  // to node m: every source g's counts for it
    for (int g = 0; g < G; ++g)
      for (int e = 0; e < El; ++e) s2[i++] = md[(g * M + m) * El + e];
  cross_->all_to_all(send2, recv);  // from node n, source g: recv[(n*G + g)*El + e], flat order
  return recv;
}

// (sent,C) in send order -> (rows,C) source-major, as one flat exchange or the two phases.
Var AllToAllDispatcher::send_rows(Tape& tape, const Var& send, const DispatchPlan& plan) {
  // &exchange_s_: the backward exchanges count as dispatch in --profile too.
  if (!node_) return all_to_all_rows(tape, send, plan.send_counts, plan.recv_counts, *ep_, &exchange_s_);
  const HierPlan& h = plan.hier;
  Var p1 = gather_rows(tape, send, h.pack1);  // by local index, node
  // phase 1: in the node
  Var got1 = all_to_all_rows(tape, p1, h.node_send, h.node_recv, *node_, &exchange_s_);
  Var p2 = gather_rows(tape, got1, h.pack2);  // by node, then source
  // phase 2: across nodes
  return all_to_all_rows(tape, p2, h.cross_send, h.cross_recv, *cross_, &exchange_s_);
}

// The mirror of send_rows: (rows,C) source-major -> (sent,C) in send order.
Var AllToAllDispatcher::return_rows(Tape& tape, const Var& back, const DispatchPlan& plan) {
  if (!node_) return all_to_all_rows(tape, back, plan.recv_counts, plan.send_counts, *ep_, &exchange_s_);
  const HierPlan& h = plan.hier;
  // phase 2 reversed
  Var r2 = all_to_all_rows(tape, back, h.cross_recv, h.cross_send, *cross_, &exchange_s_);
  Var u2 = gather_rows(tape, r2, h.unpack2);  // phase-1 order
  // phase 1 reversed
  Var r1 = all_to_all_rows(tape, u2, h.node_recv, h.node_send, *node_, &exchange_s_);
  return gather_rows(tape, r1, h.unpack1);                    // send order
}

Var AllToAllDispatcher::permute(Tape& tape, const Var& x, const Tensor& ids, DispatchPlan& plan) {
  Arena& a = tape.host_arena();  // the plan is host memory whatever device the rows live on
  const int P = ep_->size();
  Tensor counts = plan_local(a, ids, E_, P, plan);
  ANYK_CHECK(x.shape().ndim == 2 && x.shape()[0] == plan.N,
             "dispatcher: x " << x.shape().str() << " does not match ids " << ids.shape.str());
  if (P == 1) {
    upload_plan(tape.arena(), plan);
    return gather_rows(tape, x, plan.send_tok);  // (N,C) -> (rows,C)
  }
  double t0 = now_s();
  Tensor mid;
  Tensor recv = exchange_counts(a, counts, &mid);
  exchange_s_ += now_s() - t0;
  plan_receive(a, counts, recv, P, plan);
  if (node_) plan_hier(a, mid, node_->size(), cross_->size(), plan);
  upload_plan(tape.arena(), plan);
  Var send = gather_rows(tape, x, plan.send_tok);  // (N,C) -> (sent,C) by expert
  t0 = now_s();
  Var got = send_rows(tape, send, plan);                           // -> (rows,C) source-major
  exchange_s_ += now_s() - t0;
  return gather_rows(tape, got, plan.regroup);     // source-major -> expert-major
}

Var AllToAllDispatcher::unpermute(Tape& tape, const Var& y, const Var& weights, const DispatchPlan& plan) {
  Var ret = y;
  if (ep_->size() > 1) {
    Var back = gather_rows(tape, y, plan.inverse);  // expert-major -> source-major
    double t0 = now_s();
    ret = return_rows(tape, back, plan);                            // -> (sent,C) in send order
    exchange_s_ += now_s() - t0;
  }
  // (sent,C) -> (N,C): out[tok] += w[slot] * row
  return scatter_add_rows(tape, ret, &weights, plan.send_tok, plan.send_slot, plan.N);
}

namespace {
const LocalCommunicator& local_communicator() {
  static const LocalCommunicator c;
  return c;
}
}  // namespace

LocalDispatcher::LocalDispatcher(int num_experts) : AllToAllDispatcher(local_communicator(), num_experts) {}

}  // namespace anyk
