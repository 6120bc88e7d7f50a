// Process groups: world = ep x edp. Ranks [g*ep, (g+1)*ep) form expert-parallel group g (a
// contiguous block, so it fits inside a node first); ranks with the same position in their ep
// group form an expert-data-parallel group (they hold the same experts). Dense weights are
// replicated on every rank and synchronised over the world.
#pragma once
#include <memory>
#include <string>

#include "parallel/comm.h"
#include "parallel/dispatcher.h"

namespace anyk {

// How rows and gradients travel between ranks (--comm): over the MPI groups themselves (device
// buffers staged through the host), or over NCCL communicators built on them (parallel/nccl_comm.h;
// counts, checkpoints and control stay on MPI).
enum class CommKind { Mpi, Nccl };
CommKind parse_comm(const std::string& name);  // "mpi" | "nccl"; the error lists both
const char* comm_name(CommKind kind);

// nccl when there is one, else the MPI group.
inline const Communicator& data_path(const std::unique_ptr<Communicator>& nccl, const Comm& mpi) {
  if (nccl) return *nccl;
  return mpi;
}

struct ProcessGroups {
  Comm world;  // every rank: dense-gradient all-reduce, data parallelism
  Comm ep;     // this rank's expert-parallel group: the dispatcher's all-to-all
  Comm edp;    // ranks holding the same experts: expert-gradient all-reduce
  int ep_size = 1, edp_size = 1;
  // CommKind::Nccl: NCCL communicators over the groups of more than one rank (null otherwise).
  std::unique_ptr<Communicator> world_nccl, ep_nccl, edp_nccl;
  // The data path's communicator for each group: its NCCL one if any, else the MPI group.
  const Communicator& world_data() const { return data_path(world_nccl, world); }
  const Communicator& ep_data() const { return data_path(ep_nccl, ep); }
  const Communicator& edp_data() const { return data_path(edp_nccl, edp); }
};

// Checks the layout (E % ep == 0, world % ep == 0) before any work; ep <= 0 means ep = world.
// The error names the values and lists the ep sizes that would divide.
void check_layout(int world_size, int ep, int experts);
// Collective over world. CommKind::Nccl also builds the NCCL communicators (needs the CUDA
// backend initialised on every rank).
ProcessGroups make_groups(Comm world, int ep, int experts, CommKind comm = CommKind::Mpi);

// The two levels of the hierarchical all-to-all inside an ep group of P = M x G ranks: `node`
// holds the G ep ranks of this node, `cross` the M ep ranks with this rank's local index (one
// per node); ep rank = node index * G + local index.
struct NodeGroups {
  Comm node;   // G ranks: phase 1
  Comm cross;  // M ranks: phase 2
  std::unique_ptr<Communicator> node_nccl, cross_nccl;  // when the ep group's data path is NCCL
};
// Collective over ep. Nodes are the ranks that share memory (MPI_COMM_TYPE_SHARED), unless
// node_size > 0 or the environment sets ANYK_A2A_NODE_SIZE=n: then consecutive ep ranks form
// nodes of n (to test the hierarchy on one machine). Every rank throws the same error when the
// nodes differ in size or do not hold consecutive ep ranks.
NodeGroups make_node_groups(const Comm& ep, int node_size = 0);

// The training dispatcher over g.ep's data path (g.ep_data()): flat, or hier with node groups
// built into *nodes (which must outlive the dispatcher; NCCL ones too when g has ep_nccl).
// Collective over g.ep.
std::unique_ptr<AllToAllDispatcher> make_dispatcher(const ProcessGroups& g, int experts, A2A mode,
                                                    NodeGroups* nodes);

}  // namespace anyk
