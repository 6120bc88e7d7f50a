// Building the communicators with MPI_Comm_split (and NCCL over them for --comm nccl); see groups.h.
#include "parallel/groups.h"

#include <cstdlib>
#include <sstream>
#include <string>

#include "parallel/nccl_comm.h"

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

CommKind parse_comm(const std::string& name) {
  if (name == "mpi") return CommKind::Mpi;
  if (name == "nccl") return CommKind::Nccl;
  ANYK_FAIL("--comm '" << name << "' is not a communicator hint: use mpi (the default) or nccl (needs --device cuda)");
}

const char* comm_name(CommKind kind) { return kind == CommKind::Nccl ? "nccl" : "mpi"; }

ProcessGroups make_groups(Comm world, int ep, int experts, CommKind comm) {
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
  if (comm == CommKind::Nccl) {  // one-rank groups move nothing: they keep the MPI group
    if (g.world.size() > 1) g.world_nccl = make_nccl_communicator(g.world);
    if (g.ep.size() > 1) g.ep_nccl = make_nccl_communicator(g.ep);
    if (g.edp.size() > 1) g.edp_nccl = make_nccl_communicator(g.edp);
  }
  return g;
}

namespace {
int env_node_size() {
  const char* v = std::getenv("ANYK_A2A_NODE_SIZE");
  if (!v || !*v) return 0;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  ANYK_CHECK(*end == 0 && n >= 1 && n <= 1 << 20,
             "ANYK_A2A_NODE_SIZE='" << v << "' is not a positive rank count hint: unset it, or set the "
                                    "number of consecutive ranks per node");
  return int(n);
}
}  // namespace

NodeGroups make_node_groups(const Comm& ep, int node_size) {
  const int P = ep.size(), r = ep.rank();
  if (node_size <= 0) node_size = env_node_size();
  ANYK_CHECK(node_size <= 0 || P % node_size == 0,
             "node size " << node_size << " (ANYK_A2A_NODE_SIZE) does not divide the " << P
                          << " ranks of the expert-parallel group hint: pick a divisor of --ep");
  NodeGroups g;
  g.node = node_size > 0 ? ep.split(r / node_size, r) : ep.split_node(r);
  const int G = g.node.size(), l = g.node.rank();
  // Blocked layout: every node holds G consecutive ep ranks starting at a multiple of G.
  // (Every rank makes every collective call: no short-circuit.)
  const double base = double(r - l);
  const double node_hi = g.node.all_reduce_max(base), node_lo = -g.node.all_reduce_max(-base);
  const double g_hi = ep.all_reduce_max(double(G)), g_lo = -ep.all_reduce_max(-double(G));
  const bool bad = int(base) % G != 0 || node_hi != node_lo || g_hi != g_lo;
  if (ep.all_reduce_max(bad ? 1.0 : 0.0) != 0)
    ANYK_FAIL("--a2a hier needs every node to hold the same number of consecutive expert-parallel ranks, "
              "but ep rank " << r << " is rank " << l << " of " << G << " on its node hint: place ranks by "
              "node (mpirun --map-by slot, srun --distribution=block), set ANYK_A2A_NODE_SIZE, or use --a2a flat");
  g.cross = ep.split(l, r / G);
  return g;
}

std::unique_ptr<AllToAllDispatcher> make_dispatcher(const ProcessGroups& g, int experts, A2A mode,
                                                    NodeGroups* nodes) {
  if (mode == A2A::Flat || g.ep.size() == 1) return std::make_unique<AllToAllDispatcher>(g.ep_data(), experts);
  *nodes = make_node_groups(g.ep);
  if (!g.ep_nccl) return std::make_unique<AllToAllDispatcher>(g.ep, nodes->node, nodes->cross, experts);
  // NCCL over each level (a one-rank level keeps its MPI group: nothing travels there).
  if (nodes->node.size() > 1) nodes->node_nccl = make_nccl_communicator(nodes->node);
  if (nodes->cross.size() > 1) nodes->cross_nccl = make_nccl_communicator(nodes->cross);
  return std::make_unique<AllToAllDispatcher>(*g.ep_nccl, data_path(nodes->node_nccl, nodes->node),
                                              data_path(nodes->cross_nccl, nodes->cross), experts);
}

}  // namespace anyk
