// sync_gradients; see grad_sync.h.
#include "parallel/grad_sync.h"

namespace anyk {

void sync_gradients(ParamStore& ps, const ProcessGroups& g) {
  auto reduce = [&](Region r, const Communicator& c) {
    if (c.size() == 1 || ps.region_numel(r) == 0) return;
    Tensor grad;  // the region's flat gradient, (numel)
    grad.data = ps.region_grad(r);
    grad.shape = {ps.region_numel(r)};
    grad.dtype = ps.dtype();
    c.all_reduce_sum(grad);
  };
  reduce(Region::Dense, g.world);
  reduce(Region::Expert, g.edp);
}

}  // namespace anyk
