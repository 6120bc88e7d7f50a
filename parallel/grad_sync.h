// Gradient synchronisation: one all-reduce (sum) per flat region. Dense gradients over every
// rank; expert gradients over the expert-data-parallel group (the ranks holding the same
// experts). Sums, not means: the loss is already normalised by the global token count.
#pragma once
#include "parallel/groups.h"
#include "runtime/params.h"

namespace anyk {

void sync_gradients(ParamStore& ps, const ProcessGroups& g);

}  // namespace anyk
