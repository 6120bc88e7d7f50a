// sync_gradients and the --zero 1 collectives; see grad_sync.h.
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

const Communicator& data_parallel_group(const ProcessGroups& g, Region r) {
  return r == Region::Dense ? g.world_data() : g.edp_data();
}

BlockRange zero_block(const ParamStore& ps, const ProcessGroups& g, Region r) {
  const Communicator& c = data_parallel_group(g, r);
  return block_range(ps.region_numel(r), c.size(), c.rank());
}

void reduce_scatter_gradients(ParamStore& ps, const ProcessGroups& g) {
  for (Region r : {Region::Dense, Region::Expert})
    if (ps.region_numel(r) > 0) data_parallel_group(g, r).reduce_scatter_sum(ps.region_gradient(r));
}

void all_gather_params(ParamStore& ps, const ProcessGroups& g) {
  for (Region r : {Region::Dense, Region::Expert})
    if (ps.region_numel(r) > 0) data_parallel_group(g, r).all_gather_blocks(ps.region_value(r));
}

}  // namespace anyk
