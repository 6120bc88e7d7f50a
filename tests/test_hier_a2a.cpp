// The hierarchical all-to-all (--a2a hier) under mpiexec: for every node size that divides the
// ranks (and the one ANYK_A2A_NODE_SIZE sets, which ctest varies), the expert rows, the
// unpermuted output and the gradients of tokens and router weights are bit-identical to the
// flat all-to-all and to a single process holding every expert and every rank's tokens, with
// experts that receive no rows and a rank that sends nothing; LM gradients match flat bitwise.
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>

#include "model/lm.h"
#include "parallel/grad_sync.h"
#include "parallel/groups.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

constexpr int C = 3;

// Routing of source rank s: rank 1 sends nothing; experts 1 and E-1 are never chosen (empty on
// the first and last rank); slot 2 unused on even tokens; K distinct experts per token.
int tokens_of(int s) { return 5 + s; }
std::vector<int> ids_of(int s, int K, int E) {
  const int N = tokens_of(s);
  std::vector<int> ids(size_t(N) * K, -1);
  if (s == 1) return ids;
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) {
      if (k == 2 && n % 2 == 0) continue;
      int e = int(hash_key(3, s, n, k) % uint64_t(E));
      for (bool clash = true; clash;) {
        clash = e == 1 || e == E - 1;
        for (int j = 0; j < k; ++j) clash |= ids[size_t(n) * K + j] == e;
        if (clash) e = (e + 1) % E;
      }
      ids[size_t(n) * K + k] = e;
    }
  return ids;
}
std::vector<double> x_of(int s) { return randn(size_t(tokens_of(s)) * C, 100 + s); }
std::vector<double> w_of(int s, int K) { return randn(size_t(tokens_of(s)) * K, 200 + s); }
std::vector<double> dout_of(int s) { return randn(size_t(tokens_of(s)) * C, 300 + s); }

// What one rank (or the single-process reference, sources = all) sees after permute, unpermute
// and a backward pass seeded with dout on the output.
struct Outcome {
  std::vector<double> rows, out, dx, dw;
  std::vector<int> offsets;
};

Outcome run(Dispatcher& d, const std::vector<int>& sources, int K, int E) {
  std::vector<int> ids;
  std::vector<double> x, w, dout;
  for (int s : sources) {
    auto a = ids_of(s, K, E);
    auto b = x_of(s), c = w_of(s, K), g = dout_of(s);
    ids.insert(ids.end(), a.begin(), a.end());
    x.insert(x.end(), b.begin(), b.end());
    w.insert(w.end(), c.begin(), c.end());
    dout.insert(dout.end(), g.begin(), g.end());
  }
  const int N = int(x.size()) / C;
  Arena arena(1 << 16);
  Tape tape(arena);
  Var xv = leaf(tape, {N, C}, DType::F64, x), wv = leaf(tape, {N, K}, DType::F64, w);
  DispatchPlan plan;
  Var rows = d.permute(tape, xv, Tensor{ids.data(), {N, K}, DType::I32}, plan);
  Var out = d.unpermute(tape, rows, wv, plan);
  fill(out.grad, dout);
  tape.backward_seeded();
  Outcome o{read(rows.val), read(out.val), read(xv.grad), read(wv.grad), {}};
  o.offsets.assign(plan.offsets.ptr<int32_t>(), plan.offsets.ptr<int32_t>() + d.num_local() + 1);
  return o;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

// This rank's slice of the single-process reference: its local experts' row blocks, and its
// own tokens' outputs and gradients.
Outcome slice(const Outcome& ref, int me, int first, int El, int K) {
  Outcome o;
  int t0 = 0;
  for (int s = 0; s < me; ++s) t0 += tokens_of(s);
  const int N = tokens_of(me);
  auto part = [](const std::vector<double>& v, size_t a, size_t n) {
    return std::vector<double>(v.begin() + a, v.begin() + a + n);
  };
  o.out = part(ref.out, size_t(t0) * C, size_t(N) * C);
  o.dx = part(ref.dx, size_t(t0) * C, size_t(N) * C);
  o.dw = part(ref.dw, size_t(t0) * K, size_t(N) * K);
  const int r0 = ref.offsets[first], r1 = ref.offsets[first + El];
  o.rows = part(ref.rows, size_t(r0) * C, size_t(r1 - r0) * C);
  for (int e = 0; e <= El; ++e) o.offsets.push_back(ref.offsets[first + e] - r0);
  return o;
}

void check_same(const Outcome& got, const Outcome& want) {
  CHECK(got.offsets == want.offsets);
  CHECK(same_bits(got.rows, want.rows));
  CHECK(same_bits(got.out, want.out));
  CHECK(same_bits(got.dx, want.dx));
  CHECK(same_bits(got.dw, want.dw));
}

std::vector<int> divisors(int P) {
  std::vector<int> v;
  for (int d = 1; d <= P; ++d)
    if (P % d == 0) v.push_back(d);
  return v;
}

}  // namespace

TEST_CASE("hier == flat == one process, forward and backward, for every node size") {
  Comm world = Comm::world();
  const int P = world.size(), E = 4 * P, me = world.rank();
  ProcessGroups g = make_groups(Comm::world(), 0, E);
  AllToAllDispatcher flat(g.ep, E);
  std::vector<int> all(P);
  for (int s = 0; s < P; ++s) all[s] = s;
  for (int node_size : divisors(P)) {
    CAPTURE(node_size);
    NodeGroups nodes = make_node_groups(g.ep, node_size);
    REQUIRE(nodes.node.size() == node_size);
    REQUIRE(nodes.cross.size() == P / node_size);
    AllToAllDispatcher hier(g.ep, nodes.node, nodes.cross, E);
    CHECK(hier.mode() == A2A::Hier);
    for (int K : {1, 2, 3}) {
      CAPTURE(K);
      LocalDispatcher one(E);
      Outcome ref = slice(run(one, all, K, E), me, flat.first_expert(), flat.num_local(), K);
      Outcome f = run(flat, {me}, K, E), h = run(hier, {me}, K, E);
      check_same(f, ref);
      check_same(h, ref);
      const size_t El = h.offsets.size() - 1;
      if (me == 0) CHECK(h.offsets[2] == h.offsets[1]);           // expert 1 received nothing
      if (me == P - 1) CHECK(h.offsets[El] == h.offsets[El - 1]);  // expert E-1 neither
    }
  }
}

TEST_CASE("nodes from ANYK_A2A_NODE_SIZE (or shared memory) give the same rows as flat") {
  Comm world = Comm::world();
  const int P = world.size(), E = 4 * P, me = world.rank();
  ProcessGroups g = make_groups(Comm::world(), 0, E);
  NodeGroups nodes = make_node_groups(g.ep);
  const char* env = std::getenv("ANYK_A2A_NODE_SIZE");
  if (env) CHECK(nodes.node.size() == std::atoi(env));
  CHECK(nodes.node.size() * nodes.cross.size() == P);
  AllToAllDispatcher flat(g.ep, E), hier(g.ep, nodes.node, nodes.cross, E);
  for (int K : {1, 3}) {
    CAPTURE(K);
    check_same(run(hier, {me}, K, E), run(flat, {me}, K, E));
  }
}

TEST_CASE("LM gradients with hier equal flat bitwise on every ep") {
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
  const int B = 2, T = 6, N = B * T, k[2] = {2, 3};
  for (int ep : divisors(P)) {
    if (cfg.experts % ep) continue;
    CAPTURE(ep);
    ProcessGroups g = make_groups(Comm::world(), ep, cfg.experts);
    std::vector<std::vector<double>> grads[2];
    for (A2A mode : {A2A::Flat, A2A::Hier}) {
      NodeGroups nodes;
      std::unique_ptr<AllToAllDispatcher> d = make_dispatcher(g, cfg.experts, mode, &nodes);
      LM lm(cfg, *d);
      lm.init(11);
      const int me = g.world.rank();
      std::vector<int> in(N), tg(N);
      for (int i = 0; i < N; ++i) in[i] = int(hash_key(9, me, i) % 32), tg[i] = int(hash_key(9, me, i + 1) % 32);
      Arena arena(1 << 20);
      Tape tape(arena);
      Var loss = lm.forward(tape, in.data(), tg.data(), B, T, k, nullptr, double(N) * P);
      tape.backward(loss);
      sync_gradients(lm.params(), g);
      for (int id = 0; id < lm.params().size(); ++id) grads[int(mode)].push_back(read(lm.params().grad(id)));
    }
    REQUIRE(grads[0].size() == grads[1].size());
    for (size_t i = 0; i < grads[0].size(); ++i) CHECK(same_bits(grads[0][i], grads[1][i]));
  }
}

TEST_CASE("a node size that does not divide the ranks is refused on every rank") {
  Comm world = Comm::world();
  ProcessGroups g = make_groups(Comm::world(), 0, 2 * world.size());
  try {
    make_node_groups(g.ep, world.size() + 1);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("does not divide") != std::string::npos);
  }
  CHECK_THROWS_WITH_AS(parse_a2a("2d"), doctest::Contains("flat or hier"), Error);
}
