// Activation recompute (--recompute layer, runtime/tape.h checkpoint): every parameter gradient,
// the loss and the router statistics are the same bits as the plain backward, for a dense model,
// MoE with one K, a K per layer, EMoE's sampled co-activation, top-p routing, f64 and bf16
// activation storage, over two accumulated micro-batches; the same on the checked device (strict:
// the recompute goes through the device seam only); and the step arena's high-water mark is lower.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "checked_device.h"
#include "model/lm.h"
#include "parallel/dispatcher.h"
#include "runtime/device.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

struct Case {
  const char* name;
  ModelConfig cfg;
  std::vector<int> k;     // one K per layer
  std::vector<int> pool;  // EMoE pools (empty: none)
  bool bf16 = false;      // bf16 activation storage
};

ModelConfig base(int layers, int experts) {
  ModelConfig c;
  c.vocab = 23;
  c.dim = 16;
  c.layers = layers;
  c.heads = 2;
  c.experts = experts;
  c.expert_hidden = 12;
  c.seq_len = 8;
  c.init_std = 0.3;
  c.router.lb_coef = 0.02;
  c.router.z_coef = 0.003;
  return c;
}

std::vector<Case> cases() {
  std::vector<Case> v;
  v.push_back({"dense (one expert, K=1)", base(3, 1), {1, 1, 1}, {}});
  v.push_back({"MoE, K=2 in every layer", base(3, 4), {2, 2, 2}, {}});
  v.push_back({"MoE, a K per layer", base(4, 4), {1, 3, 4, 2}, {}});
  Case emoe{"EMoE: K=2 drawn from per-layer pools, router KL", base(3, 6), {2, 2, 2}, {4, 2, 6}};
  emoe.cfg.router.kl_coef = 0.05;
  v.push_back(emoe);
  Case topp{"top-p routing, K <= 3", base(2, 4), {3, 3}, {}};
  topp.cfg.router.top_p = 0.5;
  topp.cfg.router.k_min = 1;
  v.push_back(topp);
  Case f64{"f64, a K per layer", base(2, 4), {3, 1}, {}};
  f64.cfg.dtype = DType::F64;
  v.push_back(f64);
  v.push_back({"bf16 activation storage, a K per layer", base(3, 4), {2, 4, 1}, {}, true});
  return v;
}

// Everything a training micro-step produces, as raw bytes where bits are compared.
struct Run {
  std::vector<std::vector<char>> grads;  // per parameter
  std::vector<char> loss;
  std::vector<double> ce, aux, router_losses;
  std::vector<int> counts, ids;
  std::vector<float> probs;
  size_t high_water = 0;  // step arena + scratch
};

std::vector<char> bytes_of(const Tensor& t) {
  std::vector<char> h(t.bytes());
  to_host(h.data(), t);
  return h;
}

// Two accumulated micro-batches (forward with stats, backward) of case c on `dev`.
Run train_micro_batches(const Case& c, Recompute r, Device dev) {
  const ModelConfig& cfg = c.cfg;
  const int B = 2, T = 8, N = B * T, micro = 2;
  LocalDispatcher disp(cfg.experts);
  LM lm(cfg, disp, dev);
  lm.set_recompute(r);
  lm.init(5);
  Arena arena(1 << 16, dev);  // small chunks: the high-water mark follows the allocations closely
  Tape tape(arena);
  if (c.bf16) tape.set_activation_storage(DType::BF16);
  Run out;
  for (int a = 0; a < micro; ++a) {
    std::vector<int> in(N), tg(N);
    for (int i = 0; i < N; ++i) in[i] = int(hash_key(3, a, i) % 23), tg[i] = int(hash_key(4, a, i) % 23);
    arena.reset();
    tape.clear();
    ForwardStats st;
    st.capture_router = true;
    Var loss = lm.forward(tape, in.data(), tg.data(), B, T, c.k, &st, double(N) * micro, c.pool, 100 + a);
    tape.backward(loss);
    out.loss = bytes_of(loss.val);
    out.ce.push_back(st.ce);
    out.aux.push_back(st.aux);
    for (const MoEStats& ls : st.layers) {
      out.router_losses.insert(out.router_losses.end(), {ls.lb, ls.z, ls.kl});
      out.counts.insert(out.counts.end(), ls.counts.begin(), ls.counts.end());
      out.ids.insert(out.ids.end(), ls.ids.begin(), ls.ids.end());
      out.probs.insert(out.probs.end(), ls.probs.begin(), ls.probs.end());
    }
  }
  for (int id = 0; id < lm.params().size(); ++id) out.grads.push_back(bytes_of(lm.params().grad(id)));
  out.high_water = arena.high_water() + tape.scratch_high_water();
  return out;
}

void check_same(const Run& plain, const Run& rec) {
  CHECK(plain.loss == rec.loss);
  CHECK(plain.ce == rec.ce);
  CHECK(plain.aux == rec.aux);
  CHECK(plain.router_losses == rec.router_losses);
  CHECK(plain.counts == rec.counts);
  CHECK(plain.ids == rec.ids);
  REQUIRE(plain.probs.size() == rec.probs.size());
  CHECK(std::memcmp(plain.probs.data(), rec.probs.data(), plain.probs.size() * sizeof(float)) == 0);
  REQUIRE(plain.grads.size() == rec.grads.size());
  int nonzero = 0;
  for (size_t i = 0; i < plain.grads.size(); ++i) {
    CAPTURE(i);
    CHECK(plain.grads[i] == rec.grads[i]);
    for (char b : plain.grads[i]) nonzero += b != 0;
  }
  CHECK(nonzero > 0);  // not vacuous: the gradients were computed
}

}  // namespace

TEST_CASE("recompute: every parameter gradient, the loss and the router stats are the plain run's bits") {
  for (const Case& c : cases()) {
    const std::string name = c.name;
    CAPTURE(name);
    Run plain = train_micro_batches(c, Recompute::None, Device::CPU);
    Run rec = train_micro_batches(c, Recompute::Layer, Device::CPU);
    check_same(plain, rec);
    CHECK(plain.ids.size() > 0);
  }
}

TEST_CASE("recompute: the EMoE draw is replayed, not redrawn (another sample key changes the gradients)") {
  // The property above would hold vacuously if the pools did not matter; they do.
  Case c = cases()[3];
  Run a = train_micro_batches(c, Recompute::Layer, Device::CPU);
  Case d = c;
  d.pool = {3, 5, 4};
  Run b = train_micro_batches(d, Recompute::Layer, Device::CPU);
  CHECK(a.ids != b.ids);
  CHECK(a.grads != b.grads);
}

TEST_CASE("recompute: on the checked device (strict) the gradients equal the CPU's and the plain run's") {
  register_checked_device();
  for (int which : {2, 3, 6}) {  // a K per layer, EMoE, bf16 storage
    const Case c = cases()[size_t(which)];
    const std::string name = c.name;
    CAPTURE(name);
    Run cpu = train_micro_batches(c, Recompute::Layer, Device::CPU);
    Run plain, rec;
    {
      Strict s;
      plain = train_micro_batches(c, Recompute::None, Device::Checked);
      rec = train_micro_batches(c, Recompute::Layer, Device::Checked);
    }
    check_same(plain, rec);
    check_same(cpu, rec);
    CHECK(rec.high_water < plain.high_water);
  }
}

TEST_CASE("recompute: the step arena's high-water mark is lower, and grows less with the layers") {
  // Sizes where the layers' activations dominate (as in training): the peak under recompute is
  // one layer's activations plus each layer's input and output; without, every layer's.
  auto peak = [](int L, Recompute r) {
    ModelConfig cfg = base(L, 4);
    cfg.dim = 32;
    cfg.expert_hidden = 32;
    cfg.seq_len = 32;
    Case c{"peak", cfg, std::vector<int>(size_t(L), 2), {}};
    return double(train_micro_batches(c, r, Device::CPU).high_water);
  };
  const double p2 = peak(2, Recompute::None), r2 = peak(2, Recompute::Layer);
  const double p8 = peak(8, Recompute::None), r8 = peak(8, Recompute::Layer);
  MESSAGE("arena high-water (bytes): L=2 plain " << p2 << " recompute " << r2 << "; L=8 plain " << p8
                                                 << " recompute " << r8);
  CHECK(r2 < p2);
  CHECK(r8 < p8);
  // Each extra layer costs its whole activations without recompute, but only its kept input and
  // output (and a few scalars) with it.
  CHECK((r8 - r2) * 4 < (p8 - p2));
}

TEST_CASE("recompute: parse_recompute names both modes on a bad value") {
  CHECK(parse_recompute("none") == Recompute::None);
  CHECK(parse_recompute("layer") == Recompute::Layer);
  CHECK(std::string(recompute_name(Recompute::Layer)) == "layer");
  CHECK_THROWS_WITH_AS(parse_recompute("full"), doctest::Contains("--recompute 'full'"), Error);
  CHECK_THROWS_WITH_AS(parse_recompute("full"), doctest::Contains("none"), Error);
  CHECK_THROWS_WITH_AS(parse_recompute("full"), doctest::Contains("layer"), Error);
}

TEST_CASE("recompute: a forward with grad off (evaluation) runs the layers directly, same logits") {
  const Case c = cases()[2];
  const int B = 2, T = 8, N = B * T;
  std::vector<int> in(N);
  for (int i = 0; i < N; ++i) in[i] = i % 23;
  std::vector<std::vector<char>> logits;
  for (Recompute r : {Recompute::None, Recompute::Layer}) {
    LocalDispatcher disp(c.cfg.experts);
    LM lm(c.cfg, disp);
    lm.set_recompute(r);
    lm.init(5);
    Arena arena(1 << 16);
    Tape tape(arena);
    tape.set_grad_enabled(false);
    logits.push_back(bytes_of(lm.forward(tape, in.data(), nullptr, B, T, c.k).val));
    CHECK(tape.size() == 0);
  }
  CHECK(logits[0] == logits[1]);
}
