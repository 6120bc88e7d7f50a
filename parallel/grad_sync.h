// Gradient synchronisation: one all-reduce (sum) per flat region. Dense gradients over every
// rank; expert gradients over the expert-data-parallel group (the ranks holding the same
// experts). Sums, not means: the loss is already normalised by the global token count.
//
// --zero 1 (a sharded optimizer, like ZeRO stage 1): each region's data-parallel group (dense:
// every rank; experts: the edp group) splits the flat region into blocks (block_range), one per
// rank. The gradients are reduce-scattered (each rank gets the sum of its own block only), each
// rank updates its block with AdamW moments for that block alone, and the updated parameters are
// all-gathered. Every collective goes through the groups' data-path Communicator.
#pragma once
#include "parallel/groups.h"
#include "runtime/params.h"

namespace anyk {

void sync_gradients(ParamStore& ps, const ProcessGroups& g);

// The data-parallel group of region r: world for dense, edp for experts.
const Communicator& data_parallel_group(const ProcessGroups& g, Region r);
// --zero 1: this rank's block of region r ([0, 0) for an empty region).
BlockRange zero_block(const ParamStore& ps, const ProcessGroups& g, Region r);
// --zero 1: every region's gradient reduce-scattered in place; afterwards only this rank's block
// (zero_block) of each region's gradient holds the summed gradient, the rest is undefined.
void reduce_scatter_gradients(ParamStore& ps, const ProcessGroups& g);
// --zero 1: every region's values all-gathered in place from the blocks' owners (after the update).
void all_gather_params(ParamStore& ps, const ProcessGroups& g);

}  // namespace anyk
