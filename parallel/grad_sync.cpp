// sync_gradients; see grad_sync.h.
#include "parallel/grad_sync.h"

namespace anyk {

void sync_gradients(ParamStore& ps, const ProcessGroups& g) {
  auto reduce = [&](Region r, const Comm& c) {
    if (c.size() == 1 || ps.region_numel(r) == 0) return;
    if (ps.dtype() == DType::F32)
      c.all_reduce_sum(static_cast<float*>(ps.region_grad(r)), ps.region_numel(r));
    else
      c.all_reduce_sum(static_cast<double*>(ps.region_grad(r)), ps.region_numel(r));
  };
  reduce(Region::Dense, g.world);
  reduce(Region::Expert, g.edp);
}

}  // namespace anyk
