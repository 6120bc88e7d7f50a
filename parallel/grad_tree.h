// Sums over micro-batches and ranks in one fixed order, so that training gives the same bits on
// 1 rank with --grad-accum 2 as on 2 ranks with --grad-accum 1 (docs/threads.md).
//
// A step's gradient is the sum of its global micro-batches' gradients, m = rank * A + a. Each
// micro-batch's gradient is computed from zero (the store is zeroed before its backward), and
// the partials are combined in a pairwise tree over m: on one rank with A = 4,
// ((g0 + g1) + (g2 + g3)). A rank owns the aligned block [rank * A, (rank + 1) * A) and sums its
// subtree here (MicroBatchTree); the gradient all-reduce then adds the ranks' subtrees. For 2
// ranks that is a + b in any MPI algorithm (float addition is commutative), so 1 rank and 2 ranks
// agree bit for bit when A is a power of two. (More ranks: MPI's all-reduce may group the sums
// differently, e.g. a ring; those layouts agree to rounding only.)
//
// Under expert parallelism an expert's rows come from every rank of its ep group in one
// backward; model/moe_ops.cpp's grouped_linear then sums the weight gradient per source rank in
// the same pairwise tree (see grouped_linear there), which matches the micro-batch tree for
// A = 1.
#pragma once
#include <vector>

#include "parallel/comm.h"
#include "runtime/device.h"
#include "runtime/params.h"

namespace anyk {

// The pairwise tree over A micro-batches of one rank, folded as they finish (a binary counter:
// at most ceil(log2 A) stored partial gradients). A = 1 stores nothing and costs nothing.
class MicroBatchTree {
 public:
  // Gradient copies it will hold at most for A micro-batches (the memory estimate's count).
  static int copies(int A);
  // Call after micro-batch a's backward (a = 0 .. A-1, in order). Its gradient, computed from a
  // zeroed store, is folded in; before the next micro-batch the store is zeroed again. After the
  // last (a = A-1) the store holds the tree's sum over the A micro-batches.
  void fold(ParamStore& ps, int a, int A);
  // Drops the stored partials (an abandoned step).
  void clear() { stack_.clear(); }

 private:
  struct Partial {
    int level;
    DeviceBuffer dense, expert;
  };
  std::vector<Partial> stack_;
  std::vector<Partial> spare_;  // buffers kept for the next step
};

// The same pairwise tree over a rank's micro-batch values (the step's loss): ((v0 + v1) + (v2 + v3)).
double tree_sum(const std::vector<double>& v);

// Canonical squared norm of the expert gradients of an ep group: one sum of squares per
// (parameter tensor, global expert) slab, computed slab by slab, exchanged over `ep` (each slab
// lives on exactly one rank of it; the others contribute zeros, and x + 0 = x), then added in
// (tensor, global expert) order. The same bits whatever the ep size.
double expert_grad_sumsq(const ParamStore& ps, const Comm& ep);

}  // namespace anyk
