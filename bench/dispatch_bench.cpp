// Dispatcher exchange cost against a bare MPI_Alltoallv of the same bytes. Run under mpirun:
//   mpirun -np 2 build/dispatch_bench [N C E K reps]
// For each rep: router-like random ids (N,K) over E experts -> MpiDispatcher permute + unpermute
// (timing only its count and row exchanges), then the same two row exchanges as bare
// MPI_Alltoallv calls with identical counts. Prints medians (rank 0) and their ratio.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "parallel/groups.h"
#include "parallel/mpi_dispatcher.h"
#include "runtime/ops/ops.h"
#include "runtime/rng.h"

using namespace anyk;

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char** argv) {
  mpi_init_once(&argc, &argv);
  try {
    int N = argc > 1 ? std::atoi(argv[1]) : 2048, C = argc > 2 ? std::atoi(argv[2]) : 128;
    int E = argc > 3 ? std::atoi(argv[3]) : 8, K = argc > 4 ? std::atoi(argv[4]) : 2;
    int reps = argc > 5 ? std::atoi(argv[5]) : 50;
    Comm world = Comm::world();
    ProcessGroups g = make_groups(Comm::world(), 0, E);
    MpiDispatcher d(g.ep, E);
    const int P = g.ep.size(), me = g.ep.rank();
    Arena arena(size_t(256) << 20);
    Tape tape(arena);
    tape.set_grad_enabled(false);
    std::vector<float> x(size_t(N) * C, 1.0f);
    std::vector<double> t_disp, t_bare;
    std::vector<float> sendbuf, recvbuf;
    for (int r = 0; r < reps; ++r) {
      arena.reset();
      tape.clear();
      std::vector<int> ids(size_t(N) * K);
      for (int n = 0; n < N; ++n)  // K distinct experts per token, random per rep
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
      Var xv;
      xv.val.data = x.data();
      xv.val.shape = {N, C};
      Var w = tape.make({N, K}, DType::F32, false);
      std::fill(w.val.ptr<float>(), w.val.ptr<float>() + size_t(N) * K, 1.0f / K);
      d.reset_timers();
      world.barrier();
      DispatchPlan plan;
      Var rows = d.permute(tape, xv, ids.data(), N, K, plan);
      d.unpermute(tape, rows, w, plan);
      t_disp.push_back(world.all_reduce_max(d.exchange_seconds()));
      // The same row exchanges, bare: send counts per destination from the routing.
      std::vector<int> sc(P, 0), rc;
      for (int i = 0; i < N * K; ++i) ++sc[ids[i] / (E / P)];
      rc = g.ep.all_to_all(sc);
      int S = 0, R = 0;
      for (int i = 0; i < P; ++i) S += sc[i], R += rc[i];
      sendbuf.assign(size_t(S) * C, 1.0f);
      recvbuf.resize(size_t(R) * C);
      world.barrier();
      double t0 = MPI_Wtime();
      g.ep.all_to_all_v(sendbuf.data(), sc.data(), recvbuf.data(), rc.data(), int64_t(C) * 4);
      g.ep.all_to_all_v(recvbuf.data(), rc.data(), sendbuf.data(), sc.data(), int64_t(C) * 4);
      t_bare.push_back(world.all_reduce_max(MPI_Wtime() - t0));
    }
    if (world.rank() == 0) {
      double a = median(t_disp), b = median(t_bare);
      std::printf("dispatch_bench: ranks %d, N %d C %d E %d K %d, %d reps (max over ranks, median)\n", P, N, C, E,
                  K, reps);
      std::printf("  dispatcher exchanges (counts + rows, both ways): %.3f ms\n", a * 1e3);
      std::printf("  bare MPI_Alltoallv of the same rows, both ways:  %.3f ms\n", b * 1e3);
      std::printf("  ratio dispatcher / bare: %.2f\n", a / b);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dispatch_bench: error: %s\n", e.what());
    abort_job_if_parallel(2);
    return 2;
  }
  return 0;
}
