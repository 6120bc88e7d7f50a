// Expert parallelism under mpiexec (ctest runs this on 2 and 4 ranks, every ep that divides):
// the dispatcher round trip is the identity forward and backward with skewed routing that
// leaves ranks and experts empty, each local expert receives exactly the rows routed to it, and
// the LM's synchronised gradients on any layout equal a single-process run on the global batch.
#include <doctest/doctest.h>

#include "model/lm.h"
#include "parallel/grad_sync.h"
#include "parallel/groups.h"
#include "parallel/dispatcher.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

std::vector<int> valid_eps(int P, int E) {
  std::vector<int> v;
  for (int ep = 1; ep <= P; ++ep)
    if (P % ep == 0 && E % ep == 0) v.push_back(ep);
  return v;
}

}  // namespace

TEST_CASE("dispatcher round trip on every ep, skewed routing with empty ranks and experts") {
  Comm world = Comm::world();
  const int P = world.size(), E = 8, C = 3, N = 7;
  for (int ep : valid_eps(P, E)) {
    CAPTURE(ep);
    ProcessGroups g = make_groups(Comm::world(), ep, E);
    AllToAllDispatcher d(g.ep, E);
    for (int K : {1, 2, 3}) {
      CAPTURE(K);
      // Global routing known to every rank: source rank s, token n, slot k. Skewed: experts
      // 0 and 5 only (so with ep 4, ranks 1 and 3 receive nothing); slot 2 unused on even tokens.
      auto id_of = [&](int s, int n, int k) {
        if (k == 2 && n % 2 == 0) return -1;
        return ((s + n + k) % 3 == 0) ? 5 : (k == 1 ? 5 : 0) ^ (k == 2 ? 5 : 0);
      };
      int me = g.ep.rank();
      std::vector<int> ids(N * K);
      for (int n = 0; n < N; ++n) {
        // distinct experts per token: slot k gets id_of, skipping duplicates by marking -1
        for (int k = 0; k < K; ++k) {
          int e = id_of(me, n, k);
          for (int j = 0; j < k; ++j)
            if (ids[n * K + j] == e) e = -1;
          ids[n * K + k] = e;
        }
      }
      auto xs = [&](int s) { return randn(N * C, 100 + s); };
      Arena arena(1 << 16);
      Tape tape(arena);
      Var x = leaf(tape, {N, C}, DType::F64, xs(me));
      std::vector<double> w(N * K, 0.0);
      for (int n = 0; n < N; ++n) {
        int used = 0;
        for (int k = 0; k < K; ++k) used += ids[n * K + k] >= 0;
        for (int k = 0; k < K; ++k) w[n * K + k] = ids[n * K + k] >= 0 ? 1.0 / used : 0.0;
      }
      Var wv = leaf(tape, {N, K}, DType::F64, w, false);
      DispatchPlan plan;
      Var rows = d.permute(tape, x, Tensor{ids.data(), {N, K}, DType::I32}, plan);
      // Expected rows of each local expert: sources in rank order, tokens in order.
      auto got = read(rows.val);
      int r = 0;
      for (int e = 0; e < d.num_local(); ++e) {
        int ge = d.first_expert() + e;
        CHECK(plan.offsets.ptr<int32_t>()[e] == r);
        for (int s = 0; s < g.ep.size(); ++s) {
          // Rebuild source s's ids the same way.
          auto xsrc = xs(s);
          for (int n = 0; n < N; ++n) {
            std::vector<int> sid(K);
            for (int k = 0; k < K; ++k) {
              int e2 = id_of(s, n, k);
              for (int j = 0; j < k; ++j)
                if (sid[j] == e2) e2 = -1;
              sid[k] = e2;
            }
            for (int k = 0; k < K; ++k)
              if (sid[k] == ge) {
                REQUIRE(r < plan.rows);
                for (int c = 0; c < C; ++c) CHECK(got[r * C + c] == xsrc[n * C + c]);
                ++r;
              }
          }
        }
      }
      CHECK(r == plan.rows);
      Var back = d.unpermute(tape, rows, wv, plan);
      CHECK(rel_err(read(back.val), xs(me)) < 1e-14);
      auto R = randn(N * C, 500 + me);
      fill(back.grad, R);
      // --profile's dispatch time counts the backward's two row exchanges as well as the forward's.
      const double forward_s = d.exchange_seconds();
      tape.backward_seeded();
      CHECK(rel_err(read(x.grad), R) < 1e-14);
      if (g.ep.size() > 1) CHECK(d.exchange_seconds() > forward_s);
    }
  }
}

TEST_CASE("LM gradients on every layout equal the single-process gradients of the global batch") {
  Comm world = Comm::world();
  const int P = world.size();
  ModelConfig cfg;
  cfg.vocab = 32;
  cfg.dim = 16;
  cfg.layers = 2;
  cfg.heads = 2;
  cfg.experts = 4;
  cfg.expert_hidden = 8;
  cfg.seq_len = 6;
  cfg.init_std = 0.3;
  cfg.dtype = DType::F64;
  const int B = 2, T = 6, N = B * T;
  // Global batch: P micro-batches of B sequences, one per rank.
  auto tokens = [&](int s, int i) { return int(hash_key(9, s, i) % 32); };
  const int k[2] = {2, 3};
  // Reference: one process, LocalDispatcher, the P micro-batches accumulated.
  LocalDispatcher ld(cfg.experts);
  LM ref(cfg, ld);
  ref.init(11);
  for (int s = 0; s < P; ++s) {
    std::vector<int> in(N), tg(N);
    for (int i = 0; i < N; ++i) in[i] = tokens(s, i), tg[i] = tokens(s, i + 1);
    Arena arena(1 << 20);
    Tape tape(arena);
    Var loss = ref.forward(tape, in.data(), tg.data(), B, T, k, nullptr, double(N) * P);
    tape.backward(loss);
  }
  for (int ep : valid_eps(P, cfg.experts)) {
    CAPTURE(ep);
    ProcessGroups g = make_groups(Comm::world(), ep, cfg.experts);
    AllToAllDispatcher d(g.ep, cfg.experts);
    LM lm(cfg, d);
    lm.init(11);
    int me = g.world.rank();
    std::vector<int> in(N), tg(N);
    for (int i = 0; i < N; ++i) in[i] = tokens(me, i), tg[i] = tokens(me, i + 1);
    Arena arena(1 << 20);
    Tape tape(arena);
    Var loss = lm.forward(tape, in.data(), tg.data(), B, T, k, nullptr, double(N) * P);
    tape.backward(loss);
    sync_gradients(lm.params(), g);
    for (int id = 0; id < lm.params().size(); ++id) {
      const ParamInfo& info = lm.params().info(id);
      CAPTURE(info.name);
      auto got = read(lm.params().grad(id));
      auto want = read(ref.params().grad(ref.params().find(info.name)));
      if (info.region == Region::Expert) {  // this rank's slice of the experts
        int64_t per = int64_t(want.size()) / cfg.experts;
        want = std::vector<double>(want.begin() + d.first_expert() * per,
                                   want.begin() + (d.first_expert() + d.num_local()) * per);
      }
      REQUIRE(got.size() == want.size());
      CHECK(rel_err(got, want) < 1e-10);
    }
  }
}

TEST_CASE("a layout that does not divide is refused before any work, naming what would divide") {
  try {
    check_layout(4, 3, 8);
    FAIL("expected an error");
  } catch (const Error& e) {
    std::string m = e.what();
    CHECK(m.find("--ep 3") != std::string::npos);
    CHECK(m.find("1, 2, 4") != std::string::npos);
  }
  CHECK_THROWS_AS(check_layout(4, 4, 6), Error);
  CHECK_NOTHROW(check_layout(4, 2, 6));
}
