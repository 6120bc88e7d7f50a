// sync_gradients; see grad_sync.h.
#include "parallel/grad_sync.h"

namespace anyk {

void sync_gradients(ParamStore& ps, const ProcessGroups& g) {
  auto reduce = [&](Region r, const Communicator& c) {
    if (c.size() == 1 || ps.region_numel(r) == 0) return;
    c.all_reduce_sum(ps.region_gradient(r));  // the region's flat gradient on the store's device
  };
  reduce(Region::Dense, g.world_data());
  reduce(Region::Expert, g.edp_data());
}

}  // namespace anyk
