// Process groups: world = ep x edp. Ranks [g*ep, (g+1)*ep) form expert-parallel group g (a
// contiguous block, so it fits inside a node first); ranks with the same position in their ep
// group form an expert-data-parallel group (they hold the same experts). Dense weights are
// replicated on every rank and synchronised over the world.
#pragma once
#include "parallel/comm.h"

namespace anyk {

struct ProcessGroups {
  Comm world;  // every rank: dense-gradient all-reduce, data parallelism
  Comm ep;     // this rank's expert-parallel group: the dispatcher's all-to-all
  Comm edp;    // ranks holding the same experts: expert-gradient all-reduce
  int ep_size = 1, edp_size = 1;
};

// Checks the layout (E % ep == 0, world % ep == 0) before any work; ep <= 0 means ep = world.
// The error names the values and lists the ep sizes that would divide.
void check_layout(int world_size, int ep, int experts);
ProcessGroups make_groups(Comm world, int ep, int experts);

}  // namespace anyk
