// The dispatch plan of one MoE layer and the one plan builder every dispatcher uses (one rank,
// flat all-to-all, hierarchical all-to-all). A plan is typed: every index and count is an I32
// tensor in the step arena, so it lives exactly as long as the tape that reads it.
// Residency: the plan is built on the host (from the routed ids, which come to the host once per
// layer, and the counts exchange, which MPI does on the host). Then upload_plan moves the row
// indices the kernels read (send_tok, send_slot, regroup, inverse, the hier pack/unpack maps) to
// the rows' device in ONE packed copy. The counts and offsets stay host memory: the communicator
// sizes its messages from them and grouped_linear's offsets are a documented host argument
// (kernels/kernels.h).
// Legend: N tokens, K slots per token, E experts, El = E_local experts per rank, P ranks of the
// expert-parallel group; for --a2a hier, P = M nodes x G ranks per node.
#pragma once
#include "runtime/arena.h"
#include "runtime/tensor.h"

namespace anyk {

// The two phases of the hierarchical all-to-all (parallel/dispatcher.h). Rank r is
// local index l = r % G on node n = r / G.
struct HierPlan {
  Tensor node_send, node_recv;    // I32 (G) rows to / from each rank of this node (phase 1)
  Tensor cross_send, cross_recv;  // I32 (M) rows to / from local index l of each node (phase 2)
  Tensor pack1;    // I32 (sent) phase-1 send order (by local index, then node) -> send row
  Tensor unpack1;  // I32 (sent) send row -> phase-1 position (inverse of pack1)
  Tensor pack2;    // I32 (mid) phase-2 send order (by node, then source) -> phase-1 receive row
  Tensor unpack2;  // I32 (mid) phase-1 receive row -> phase-2 position (inverse of pack2)
  bool active() const { return pack1.defined(); }
};

struct DispatchPlan {
  int N = 0, K = 0;  // tokens and slots per token on this rank
  int rows = 0;      // rows delivered to this rank's local experts
  int sent = 0;      // routed assignments (ids >= 0) on this rank, the rows it sends
  Tensor offsets;    // I32 (El+1) row offsets of each local expert's block
  Tensor counts;     // I32 (El) rows per local expert (tokens_per_expert)
  Tensor send_tok;   // I32 (sent) source token of each routed assignment, in send order
  Tensor send_slot;  // I32 (sent) its flat slot n*K + k (index into the weights)
  // The exchange; undefined on one rank (nothing travels, send order is already expert order).
  Tensor send_counts;  // I32 (P) rows to each rank
  Tensor recv_counts;  // I32 (P) rows from each rank
  Tensor regroup;      // I32 (rows) expert-major row j -> its source-major (received) position
  Tensor inverse;      // I32 (rows) source-major position -> expert-major row (inverse of regroup)
  // I32 (El*P + 1) host: row offsets of the (local expert, source rank) segments in expert-major
  // order (expert e's rows from source s start at segments[e*P + s]); grouped_linear sums the
  // weight gradient per segment in a fixed tree (parallel/grad_tree.h). Undefined on one rank.
  Tensor segments;
  HierPlan hier;       // only for --a2a hier
  Tensor expert_counts;  // I32 (E) host: assignments per global expert on this rank's tokens
};

// Step 4: the row indices (see the top of this file) as views into one block of `dev_arena`,
// filled by one host -> device copy. Nothing moves when the arena is host memory (the CPU).
void upload_plan(Arena& dev_arena, DispatchPlan& plan);

// An I32 (n) host tensor in the arena (valid memory even when n = 0).
Tensor arena_i32(Arena& a, int64_t n);

// Sort the routed assignments of ids (N,K) by expert, stably (token order within an expert).
// Writes send_tok/send_slot (sent) and per-expert counts (E); `next` is scratch (E). Returns
// `sent`. The core of plan_local; also used by the decoder (model/generate.cpp).
int sort_assignments(const int* ids, int N, int K, int E, int* send_tok, int* send_slot, int* counts,
                     int* next);

// Step 1, local: ids I32 (N,K) host (-1 = unused slot) -> plan N, K, sent, send_tok, send_slot.
// Returns the per-expert counts, I32 (E). On one rank (P = 1) it also finishes the plan (rows,
// counts, offsets): nothing else is needed.
Tensor plan_local(Arena& a, const Tensor& ids, int E, int P, DispatchPlan& plan);
// Step 3, local, after the counts exchange: expert_counts (E) from step 1 and recv (P*El), the
// rows source s sends to local expert e at s*El + e -> send/recv counts, rows, counts, offsets,
// regroup and inverse.
void plan_receive(Arena& a, const Tensor& expert_counts, const Tensor& recv, int P, DispatchPlan& plan);
// Step 3b for --a2a hier: mid (G*M*El), phase 1's received counts (what node rank g sends here
// for expert e of node m's rank with this local index, at (g*M + m)*El + e) -> plan.hier.
// Needs plan_receive first.
void plan_hier(Arena& a, const Tensor& mid, int G, int M, DispatchPlan& plan);

}  // namespace anyk
