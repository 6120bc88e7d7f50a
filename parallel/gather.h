// Collecting a sharded model into one process: the experts of an expert-parallel group are
// gathered (by global id, in rank order) into a full single-process ParamStore on the group's
// rank 0; dense parameters are replicated, so they are copied locally.
#pragma once
#include "parallel/comm.h"
#include "runtime/params.h"

namespace anyk {

// Collective over `ep`. `full` (same parameter names, expert tensors with E = ep.size() * E_local
// rows) is written on ep rank 0 and ignored elsewhere (may be null there). f32 only.
void gather_full_params(const ParamStore& local, ParamStore* full, const Comm& ep);

}  // namespace anyk
