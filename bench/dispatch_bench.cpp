// Dispatcher exchange cost, flat against hierarchical all-to-all, and a bare MPI_Alltoallv of the
// same bytes. Run under mpirun (ANYK_A2A_NODE_SIZE=n makes nodes of n consecutive ranks, so the
// hierarchy can be measured on one machine; otherwise nodes are the ranks sharing memory):
//   ANYK_A2A_NODE_SIZE=2 mpirun -np 4 build/dispatch_bench [N C E K reps]
// For each rep: router-like random ids (N,K) over E experts -> permute + unpermute (timing only
// the count and row exchanges) with --a2a flat, then hier on the same ids, then the same two row
// exchanges as bare MPI_Alltoallv calls with identical counts. Prints medians (max over ranks),
// peers per rank of one row exchange and the non-empty messages among them (mean over ranks),
// and checks that hier delivered exactly the flat rows.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "parallel/groups.h"
#include "runtime/ops/ops.h"
#include "runtime/rng.h"

using namespace anyk;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// K distinct random experts per token, the same for a given (rep, rank) in every mode.
std::vector<int> random_ids(int r, int me, int N, int K, int E) {
  std::vector<int> ids(size_t(N) * K);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) {
      int e;
      bool dup;
      uint64_t c = 0;
      do {
        e = int(uniform_int(hash_key(r, me, n, k, c++), E));
        dup = false;
        for (int j = 0; j < k; ++j) dup |= ids[size_t(n) * K + j] == e;
      } while (dup);
      ids[size_t(n) * K + k] = e;
    }
  return ids;
}

// Non-empty messages this rank sends to other ranks in one row exchange of the plan.
int messages(const DispatchPlan& plan, const Comm& ep, const NodeGroups* nodes) {
  auto count = [](const Tensor& c, int self) {
    int m = 0;
    for (int i = 0; i < int(c.numel()); ++i) m += i != self && c.ptr<int32_t>()[i] > 0;
    return m;
  };
  if (!nodes) return count(plan.send_counts, ep.rank());
  return count(plan.hier.node_send, nodes->node.rank()) + count(plan.hier.cross_send, nodes->cross.rank());
}

struct Result {
  double ms = 0, msgs = 0;
  std::vector<float> rows;  // rep 0's expert rows, to compare the modes
};

Result run(AllToAllDispatcher& d, const Comm& world, const Comm& ep, const NodeGroups* nodes, int N, int C,
           int E, int K, int reps) {
  Arena arena(size_t(256) << 20);
  Tape tape(arena);
  tape.set_grad_enabled(false);
  std::vector<float> x(size_t(N) * C);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 1009) + 0.25f * float(ep.rank());
  std::vector<double> t;
  Result res;
  for (int r = 0; r < reps; ++r) {
    arena.reset();
    tape.clear();
    std::vector<int> ids = random_ids(r, ep.rank(), N, K, E);
    Var xv;
    xv.val = Tensor{x.data(), {N, C}, DType::F32};
    Var w = tape.make({N, K}, DType::F32, false);
    std::fill(w.val.ptr<float>(), w.val.ptr<float>() + size_t(N) * K, 1.0f / K);
    d.reset_timers();
    world.barrier();
    DispatchPlan plan;
    Var rows = d.permute(tape, xv, Tensor{ids.data(), {N, K}, DType::I32}, plan);
    d.unpermute(tape, rows, w, plan);
    t.push_back(world.all_reduce_max(d.exchange_seconds()));
    res.msgs += world.all_reduce_sum(double(messages(plan, ep, nodes))) / world.size() / reps;
    if (r == 0) res.rows.assign(rows.val.ptr<float>(), rows.val.ptr<float>() + rows.val.numel());
  }
  res.ms = median(t) * 1e3;
  return res;
}

// The same two row exchanges as bare MPI_Alltoallv calls; median ms (max over ranks).
double bare(const Comm& world, const Comm& ep, int N, int C, int E, int K, int reps) {
  const int P = ep.size();
  std::vector<double> t;
  std::vector<float> sendbuf, recvbuf;
  for (int r = 0; r < reps; ++r) {
    std::vector<int> ids = random_ids(r, ep.rank(), N, K, E), sc(P, 0), rc(P);
    for (int i = 0; i < N * K; ++i) ++sc[ids[i] / (E / P)];
    ep.all_to_all(Tensor{sc.data(), {P}, DType::I32}, Tensor{rc.data(), {P}, DType::I32});
    int S = 0, R = 0;
    for (int i = 0; i < P; ++i) S += sc[i], R += rc[i];
    sendbuf.assign(size_t(S) * C, 1.0f);
    recvbuf.resize(size_t(R) * C);
    Tensor s{sendbuf.data(), {S, C}, DType::F32}, rv{recvbuf.data(), {R, C}, DType::F32};
    Tensor sct{sc.data(), {P}, DType::I32}, rct{rc.data(), {P}, DType::I32};
    world.barrier();
    double t0 = MPI_Wtime();
    ep.all_to_all_v(s, sct, rv, rct);
    ep.all_to_all_v(rv, rct, s, sct);
    t.push_back(world.all_reduce_max(MPI_Wtime() - t0));
  }
  return median(t) * 1e3;
}

}  // namespace

int main(int argc, char** argv) {
  mpi_init_once(&argc, &argv);
  try {
    int N = argc > 1 ? std::atoi(argv[1]) : 2048, C = argc > 2 ? std::atoi(argv[2]) : 128;
    int E = argc > 3 ? std::atoi(argv[3]) : 8, K = argc > 4 ? std::atoi(argv[4]) : 2;
    int reps = argc > 5 ? std::atoi(argv[5]) : 50;
    Comm world = Comm::world();
    ProcessGroups g = make_groups(Comm::world(), 0, E);
    NodeGroups nodes = make_node_groups(g.ep);
    const int P = g.ep.size(), G = nodes.node.size(), M = nodes.cross.size();
    AllToAllDispatcher flat(g.ep, E), hier(g.ep, nodes.node, nodes.cross, E);
    Result rf = run(flat, world, g.ep, nullptr, N, C, E, K, reps);
    Result rh = run(hier, world, g.ep, &nodes, N, C, E, K, reps);
    double rb = bare(world, g.ep, N, C, E, K, reps);
    const bool same = rf.rows.size() == rh.rows.size() &&
                      std::memcmp(rf.rows.data(), rh.rows.data(), rf.rows.size() * sizeof(float)) == 0;
    const bool all_same = world.all_reduce_max(same ? 0.0 : 1.0) == 0;
    if (world.rank() == 0) {
      std::printf("dispatch_bench: ranks %d = %d nodes x %d, N %d C %d E %d K %d, %d reps (max over ranks, median)\n",
                  P, M, G, N, C, E, K, reps);
      std::printf("  %-5s %9s %12s %16s\n", "a2a", "ms", "peers/rank", "non-empty msgs");
      std::printf("  %-5s %9.3f %12d %16.2f\n", "flat", rf.ms, P - 1, rf.msgs);
      std::printf("  %-5s %9.3f %12d %16.2f\n", "hier", rh.ms, (G - 1) + (M - 1), rh.msgs);
      std::printf("  %-5s %9.3f %12d %16s\n", "bare", rb, P - 1, "-");
      std::printf("  (ms: one layer's count exchange + rows there and back; bare: the two row exchanges only)\n");
      std::printf("  hier rows == flat rows (bitwise, every rank): %s\n", all_same ? "yes" : "NO");
    }
    if (!all_same) return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dispatch_bench: error: %s\n", e.what());
    abort_job_if_parallel(2);
    return 2;
  }
  return 0;
}
