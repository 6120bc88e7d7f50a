// Building the communicators with MPI_Comm_split; see groups.h.
#include "parallel/groups.h"

#include <sstream>

namespace anyk {

void check_layout(int world_size, int ep, int experts) {
  if (ep <= 0) ep = world_size;
  if (ep >= 1 && world_size % ep == 0 && experts % ep == 0) return;
  std::ostringstream ok;
  for (int d = 1; d <= world_size; ++d)
    if (world_size % d == 0 && experts % d == 0) ok << (ok.tellp() > 0 ? ", " : "") << d;
  ANYK_FAIL("--ep " << ep << " does not fit " << world_size << " ranks and " << experts
                    << " experts (need ranks % ep == 0 and experts % ep == 0). hint: use --ep "
                       "one of: "
                    << ok.str());
}

ProcessGroups make_groups(Comm world, int ep, int experts) {
  int P = world.size();
  if (ep <= 0) ep = P;
  check_layout(P, ep, experts);
  ProcessGroups g;
  int r = world.rank();
  g.ep = world.split(r / ep, r % ep);
  g.edp = world.split(r % ep, r / ep);
  g.ep_size = ep;
  g.edp_size = P / ep;
  g.world = std::move(world);
  return g;
}

}  // namespace anyk
