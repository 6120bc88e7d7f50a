// Activation recompute under expert parallelism (ctest runs this under mpiexec on 2 and 4 ranks,
// every ep that divides the experts): recomputing a MoE layer in the backward repeats its
// dispatch (counts exchange and row all-to-all) on every rank in the same order, and replays each
// rank's own K and EMoE draw. A few AdamW steps with --recompute layer give the losses, the
// synchronised gradients and the weights of the same steps without it, bit for bit.
#include <doctest/doctest.h>

#include <cstring>

#include "model/lm.h"
#include "optim/adamw.h"
#include "parallel/dispatcher.h"
#include "parallel/grad_sync.h"
#include "parallel/groups.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

struct History {
  std::vector<float> losses, grads, weights;
};

template <class T> void append(std::vector<float>& v, const Tensor& t) {
  std::vector<T> h = to_host_vector<T>(t);
  v.insert(v.end(), h.begin(), h.end());
}

// `steps` AdamW steps on layout ep; K, pools and tokens differ per rank, micro-batch and step.
History train(int ep, Recompute r, int steps) {
  ModelConfig cfg;
  cfg.vocab = 29;
  cfg.dim = 16;
  cfg.layers = 3;
  cfg.heads = 2;
  cfg.experts = 4;
  cfg.expert_hidden = 8;
  cfg.seq_len = 6;
  cfg.init_std = 0.3;
  cfg.router.kl_coef = 0.05;
  ProcessGroups g = make_groups(Comm::world(), ep, cfg.experts);
  AllToAllDispatcher d(g.ep, cfg.experts);
  LM lm(cfg, d);
  lm.set_recompute(r);
  lm.init(13);
  ParamStore& ps = lm.params();
  AdamW opt(AdamWConfig{1e-2, 0.9, 0.95, 1e-8, 0.1}, Device::CPU);
  for (Region rg : {Region::Dense, Region::Expert}) {
    const int64_t n = ps.region_numel(rg);
    if (n) opt.add_region(ps.region_value(rg).ptr<float>(), ps.region_gradient(rg).ptr<float>(), n, {{0, n, true}});
  }
  const int B = 2, T = 6, N = B * T, A = 2, P = g.world.size(), me = g.world.rank();
  History h;
  Arena arena(1 << 16);
  Tape tape(arena);
  for (int s = 0; s < steps; ++s) {
    for (int a = 0; a < A; ++a) {
      const int m = me * A + a;
      std::vector<int> in(N), tg(N), k(3), pool(3);
      for (int i = 0; i < N; ++i) in[i] = int(hash_key(s, m, i) % 29), tg[i] = int(hash_key(s, m, i + 1) % 29);
      for (int l = 0; l < 3; ++l) {
        k[l] = 1 + int(hash_key(7, s, m, l) % 3);             // 1..3
        pool[l] = m % 2 ? 0 : std::min(4, k[l] + 1 + l % 2);  // EMoE pools on some micro-batches
      }
      arena.reset();
      tape.clear();
      Var loss = lm.forward(tape, in.data(), tg.data(), B, T, k, nullptr, double(N) * A * P, pool,
                            hash_key(11, s, m));
      tape.backward(loss);
      append<float>(h.losses, loss.val);
    }
    sync_gradients(ps, g);
    for (Region rg : {Region::Dense, Region::Expert}) append<float>(h.grads, ps.region_gradient(rg));
    opt.step(1e-2);
    ps.zero_grad();
  }
  for (Region rg : {Region::Dense, Region::Expert}) append<float>(h.weights, ps.region_value(rg));
  return h;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("recompute under expert parallelism: losses, gradients and weights are the plain run's bits") {
  const int P = Comm::world().size();
  for (int ep = 1; ep <= P; ++ep) {
    if (P % ep || 4 % ep) continue;
    CAPTURE(ep);
    History plain = train(ep, Recompute::None, 3);
    History rec = train(ep, Recompute::Layer, 3);
    CHECK(same_bits(plain.losses, rec.losses));
    CHECK(same_bits(plain.grads, rec.grads));
    CHECK(same_bits(plain.weights, rec.weights));
    // Not vacuous: training moved the loss.
    REQUIRE(plain.losses.size() == 6);
    CHECK(plain.losses[0] != plain.losses[4]);
  }
}
