// The fixed-order sums over micro-batches and expert slabs; see grad_tree.h.
#include "parallel/grad_tree.h"

#include "core/check.h"
#include "kernels/kernels.h"

namespace anyk {

namespace {

// out = a + b over a whole region (float gradients).
void add_region(Device d, void* out, const void* a, const void* b, int64_t n) {
  if (n == 0) return;
  kernels<float>(d).add_forward(exec_ctx(d), static_cast<float*>(out), static_cast<const float*>(a),
                                static_cast<const float*>(b), n);
}

}  // namespace

int MicroBatchTree::copies(int A) {
  int c = 0;
  while ((1 << c) < A) ++c;
  return c;
}

void MicroBatchTree::fold(ParamStore& ps, int a, int A) {
  if (A <= 1) return;
  ANYK_CHECK(ps.dtype() == DType::F32, "the micro-batch tree sums float gradients");
  const Device d = ps.device();
  const int64_t nd = ps.region_numel(Region::Dense), ne = ps.region_numel(Region::Expert);
  void* gd = ps.region_grad(Region::Dense);
  void* ge = ps.region_grad(Region::Expert);
  // The store holds micro-batch a's gradient, a leaf; add it to every complete subtree of the
  // same size before it (earlier partial first).
  int level = 0;
  while (!stack_.empty() && stack_.back().level == level) {
    Partial& p = stack_.back();
    add_region(d, gd, p.dense.data(), gd, nd);
    add_region(d, ge, p.expert.data(), ge, ne);
    spare_.push_back(std::move(p));
    stack_.pop_back();
    ++level;
  }
  if (a + 1 < A) {  // keep the partial, zero the store for the next micro-batch
    Partial p;
    if (!spare_.empty()) {
      p = std::move(spare_.back());
      spare_.pop_back();
    } else {
      p.dense.resize(d, size_t(nd) * sizeof(float));
      p.expert.resize(d, size_t(ne) * sizeof(float));
    }
    p.level = level;
    if (nd) allocator(d).copy(p.dense.data(), gd, size_t(nd) * sizeof(float));
    if (ne) allocator(d).copy(p.expert.data(), ge, size_t(ne) * sizeof(float));
    stack_.push_back(std::move(p));
    ps.zero_grad();
    return;
  }
  // The last micro-batch of a count that is not a power of two: the remaining (larger, earlier)
  // subtrees are added from the right.
  while (!stack_.empty()) {
    Partial& p = stack_.back();
    add_region(d, gd, p.dense.data(), gd, nd);
    add_region(d, ge, p.expert.data(), ge, ne);
    spare_.push_back(std::move(p));
    stack_.pop_back();
  }
}

double tree_sum(const std::vector<double>& v) {
  std::vector<std::pair<int, double>> stack;  // (level, partial), as MicroBatchTree::fold
  for (double x : v) {
    int level = 0;
    while (!stack.empty() && stack.back().first == level) {
      x = stack.back().second + x;
      stack.pop_back();
      ++level;
    }
    stack.emplace_back(level, x);
  }
  double sum = stack.empty() ? 0.0 : stack.back().second;
  for (size_t i = stack.size(); i-- > 1;) sum = stack[i - 1].second + sum;
  return sum;
}

double expert_grad_sumsq(const ParamStore& ps, const Comm& ep) {
  const Device d = ps.device();
  std::vector<const ParamInfo*> tensors;
  for (const ParamInfo& i : ps.infos())
    if (i.region == Region::Expert) tensors.push_back(&i);
  if (tensors.empty()) return 0.0;
  const int El = int(tensors[0]->shape[0]), E = El * ep.size();
  // One double accumulator per local slab, in device memory (the kernel accumulates there).
  DeviceBuffer acc(d, sizeof(double) * tensors.size() * El);
  const float* g = static_cast<const float*>(ps.region_grad(Region::Expert));
  const Kernels<float>& k = kernels<float>(d);
  for (size_t t = 0; t < tensors.size(); ++t) {
    const ParamInfo& info = *tensors[t];
    ANYK_CHECK(int(info.shape[0]) == El, "expert tensor " << info.name << " has " << info.shape[0]
                                                          << " experts, expected " << El);
    const int64_t slab = info.shape.numel() / El;
    for (int e = 0; e < El; ++e)
      k.sumsq_accumulate(exec_ctx(d), static_cast<double*>(acc.data()) + t * El + e,
                         g + info.offset + e * slab, slab);
  }
  std::vector<double> local(tensors.size() * El), all(tensors.size() * E, 0.0);
  allocator(d).to_host(local.data(), acc.data(), local.size() * sizeof(double));
  const int first = ep.rank() * El;  // experts [rank * El, (rank + 1) * El) live on this ep rank
  for (size_t t = 0; t < tensors.size(); ++t)
    for (int e = 0; e < El; ++e) all[t * E + first + e] = local[t * El + e];
  if (ep.size() > 1) ep.all_reduce_sum(all.data(), int64_t(all.size()));
  double sum = 0.0;
  for (double v : all) sum += v;
  return sum;
}

}  // namespace anyk
