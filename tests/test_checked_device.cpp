// The device seam, proven without a GPU: the checked pseudo-device (tests/checked_device.h) runs
// the CPU kernels over a separate memory pool the host may not read. The dense ops (strict mode:
// the pool is PROT_NONE outside kernels and copy ops), AdamW and the grad norm (strict), and a
// full LM training step plus an evaluation forward must match the CPU run bit for bit.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <vector>

#include "checked_device.h"
#include "kernels/kernels.h"
#include "model/lm.h"
#include "optim/adamw.h"
#include "parallel/dispatcher.h"
#include "runtime/ops/ops.h"
#include "runtime/rng.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;

namespace {

template <class T> std::vector<T> host(const Tensor& t) { return to_host_vector<T>(t); }

template <class T> bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// A leaf on any device: values from v (through from_host), zeroed gradient.
Var leaf_on(Tape& tape, Shape s, const std::vector<float>& v) {
  Var x = tape.make(s, DType::F32, true);
  from_host(x.val, v.data());
  return x;
}

std::vector<float> randf(size_t n, uint64_t seed) {
  auto d = randn(n, seed, 0.5);
  return std::vector<float>(d.begin(), d.end());
}

// A chain of every dense op, forward and backward; returns the loss and the leaves' gradients.
struct DenseRun {
  std::vector<float> loss, gwte, gw, gln, gw2;
};
DenseRun dense_chain(Device dev) {
  const int B = 2, T = 4, C = 8, NH = 2, V = 13;
  const int ids[B * T] = {1, 5, 7, 2, 12, 0, 3, 3};
  const int tg[B * T] = {5, 7, 2, 12, 0, 3, 3, 9};
  Arena arena(1 << 20, dev);
  Tape tape(arena);
  Var wte = leaf_on(tape, {V, C}, randf(V * C, 1));
  Var w = leaf_on(tape, {3 * C, C}, randf(3 * C * C, 2));
  Var ln = leaf_on(tape, {C}, randf(C, 3));
  Var w2 = leaf_on(tape, {2 * C, C}, randf(2 * C * C, 4));
  Var x = embedding(tape, ids, B * T, wte);
  Var h = rmsnorm(tape, x, ln);
  Var qkv = linear(tape, h, w);
  qkv = rope(tape, view(qkv, {B, T, 3 * NH, C / NH}), 2 * NH, 10000.0);
  Var a = attention(tape, view(qkv, {B, T, 3 * C}), NH);
  Var y = add(tape, x, view(a, {B * T, C}));
  Var g = swiglu(tape, linear(tape, y, w2));
  Var s = scale(tape, g, 0.75);
  Var logits = linear(tape, s, wte);
  Var loss = cross_entropy(tape, logits, tg);
  tape.backward(loss);
  return {host<float>(loss.val), host<float>(wte.grad), host<float>(w.grad), host<float>(ln.grad),
          host<float>(w2.grad)};
}

ModelConfig small_lm() {
  ModelConfig c;
  c.vocab = 17;
  c.dim = 16;
  c.layers = 2;
  c.heads = 2;
  c.experts = 4;
  c.expert_hidden = 12;
  c.seq_len = 6;
  c.init_std = 0.3;
  c.router.lb_coef = 0.02;
  c.router.z_coef = 0.001;
  return c;
}

// One training step (forward, backward, grad norm + clip, AdamW) and an eval forward.
struct StepRun {
  double ce = 0, aux = 0, norm = 0;
  std::vector<float> loss, params, grads, m, v, eval_logits;
  std::vector<float> probs;
};
StepRun lm_step(Device dev, std::vector<int> ks) {
  const int B = 2, T = 6;
  std::vector<int> in(B * T), tg(B * T);
  for (int i = 0; i < B * T; ++i) in[i] = (i * 7 + 3) % 17, tg[i] = (i * 5 + 1) % 17;
  LocalDispatcher disp(4);
  LM lm(small_lm(), disp, dev);
  lm.init(11);
  ParamStore& ps = lm.params();
  AdamW opt(AdamWConfig{1e-2, 0.9, 0.95, 1e-8, 0.1}, dev);
  int region[kNumRegions];
  for (int r = 0; r < kNumRegions; ++r) {
    int64_t n = ps.region_numel(Region(r));
    region[r] = opt.add_region(ps.region_value(Region(r)).dev_ptr<float>(),
                               ps.region_gradient(Region(r)).dev_ptr<float>(), n, {{0, n, true}});
  }
  StepRun out;
  Arena arena(1 << 20, dev);
  {
    Tape tape(arena);
    ForwardStats st;
    st.capture_router = true;
    Var loss = lm.forward(tape, in.data(), tg.data(), B, T, ks, &st);
    tape.backward(loss);
    out.ce = st.ce;
    out.aux = st.aux;
    out.loss = host<float>(loss.val);
    out.probs = st.layers[0].probs;
  }
  std::vector<std::pair<float*, int64_t>> g;
  for (int r = 0; r < kNumRegions; ++r)
    g.push_back({ps.region_gradient(Region(r)).dev_ptr<float>(), ps.region_numel(Region(r))});
  out.norm = clip_grad_norm(g, 0.05, dev);  // small max: the clip path runs
  for (int r = 0; r < kNumRegions; ++r) {
    auto gr = host<float>(ps.region_gradient(Region(r)));
    out.grads.insert(out.grads.end(), gr.begin(), gr.end());
  }
  opt.step(3e-3);
  for (int r = 0; r < kNumRegions; ++r) {
    auto p = host<float>(ps.region_value(Region(r)));
    auto m = host<float>(opt.m_tensor(region[r]));
    auto v = host<float>(opt.v_tensor(region[r]));
    out.params.insert(out.params.end(), p.begin(), p.end());
    out.m.insert(out.m.end(), m.begin(), m.end());
    out.v.insert(out.v.end(), v.begin(), v.end());
  }
  arena.reset();
  Tape eval(arena);
  eval.set_grad_enabled(false);
  out.eval_logits = host<float>(lm.forward(eval, in.data(), nullptr, B, T, ks).val);
  return out;
}

}  // namespace

TEST_CASE("checked device: its memory comes from its own pool and refuses host access") {
  register_checked_device();
  Arena arena(1 << 16, Device::Checked);
  Tensor t = arena.tensor({4}, DType::F32, true);
  CHECK(t.device == Device::Checked);
  CHECK(checked_pool().owns(t.data));
  CHECK_THROWS_AS(t.ptr<float>(), Error);  // the deliberate host read is refused
  CHECK_NOTHROW(t.dev_ptr<float>());
  const float src[4] = {1, 2, 3, 4};
  from_host(t, src);
  CHECK(read_element<float>(t, 2) == 3.0f);
  ParamStore ps(DType::F32, Device::Checked);
  ps.add("w", {3, 5}, Region::Dense, true);
  ps.finalize();
  CHECK(checked_pool().owns(ps.value(0).data));
  CHECK(checked_pool().owns(ps.grad(0).data));
  CHECK_THROWS_AS(ps.value(0).ptr<float>(), Error);
  // A CPU arena's memory is not the pool's.
  Arena cpu(1 << 16);
  CHECK_FALSE(checked_pool().owns(cpu.tensor({4}, DType::F32).data));
}

TEST_CASE("checked device: strict mode faults on a raw host read of its memory") {
  register_checked_device();
  Arena arena(1 << 16, Device::Checked);
  Tensor t = arena.tensor({4}, DType::F32, true);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::signal(SIGSEGV, SIG_DFL);  // die of the fault (not through doctest's crash report)
    checked_pool().set_strict(true);
    volatile float x = static_cast<volatile float*>(t.data)[0];  // must fault
    (void)x;
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSEGV);
}

TEST_CASE("checked device: every dense op, forward and backward, matches the CPU bit for bit (strict)") {
  register_checked_device();
  DenseRun cpu = dense_chain(Device::CPU);
  DenseRun chk;
  {
    Strict s;
    chk = dense_chain(Device::Checked);
  }
  CHECK(same_bits(cpu.loss, chk.loss));
  CHECK(same_bits(cpu.gwte, chk.gwte));
  CHECK(same_bits(cpu.gw, chk.gw));
  CHECK(same_bits(cpu.gln, chk.gln));
  CHECK(same_bits(cpu.gw2, chk.gw2));
}

TEST_CASE("checked device: a bad token id is reported through the seam (strict)") {
  register_checked_device();
  Strict s;
  Arena arena(1 << 16, Device::Checked);
  Tape tape(arena);
  Var wte = leaf_on(tape, {5, 4}, randf(20, 1));
  const int ids[3] = {1, 7, 2};
  CHECK_THROWS_WITH_AS(embedding(tape, ids, 3, wte), doctest::Contains("token id 7 at position 1"), Error);
}

TEST_CASE("checked device: AdamW and the clipped grad norm match the CPU bit for bit (strict)") {
  register_checked_device();
  const int64_t n = 70000;  // above the kernels' parallel threshold
  auto p0 = randf(n, 5), g0 = randf(n, 6);
  auto run = [&](Device dev) {
    DeviceBuffer p(dev, n * 4), g(dev, n * 4);
    Tensor pt{p.data(), Shape{n}, DType::F32, dev}, gt{g.data(), Shape{n}, DType::F32, dev};
    from_host(pt, p0.data());
    from_host(gt, g0.data());
    AdamW opt(AdamWConfig{}, dev);
    int r = opt.add_region(pt.dev_ptr<float>(), gt.dev_ptr<float>(), n, {{0, n / 2, true}, {n / 2, n - n / 2, false}});
    double norm = clip_grad_norm({{gt.dev_ptr<float>(), n}}, 1.0, dev);
    opt.step(1e-3);
    opt.step(2e-3);
    std::vector<float> all = host<float>(pt), m = host<float>(opt.m_tensor(r)), v = host<float>(opt.v_tensor(r));
    all.insert(all.end(), m.begin(), m.end());
    all.insert(all.end(), v.begin(), v.end());
    return std::make_pair(norm, all);
  };
  auto cpu = run(Device::CPU);
  Strict s;
  auto chk = run(Device::Checked);
  CHECK(cpu.first == chk.first);
  CHECK(same_bits(cpu.second, chk.second));
}

TEST_CASE("checked device: a full LM training step and an eval forward match the CPU bit for bit (strict)") {
  register_checked_device();
  // Strict for the whole checked run (build, init, forward, backward, clip, AdamW, eval): the
  // router and losses run through the kernel table, and the dispatcher builds its plan in the
  // tape's host arena, so no host code touches the pool outside kernels and copy ops.
  for (std::vector<int> ks : {std::vector<int>{1, 2}, std::vector<int>{4, 3}}) {
    CAPTURE(ks[0]);
    StepRun cpu = lm_step(Device::CPU, ks);
    StepRun chk;
    {
      Strict s;
      chk = lm_step(Device::Checked, ks);
    }
    CHECK(cpu.ce == chk.ce);
    CHECK(cpu.aux == chk.aux);
    CHECK(cpu.norm == chk.norm);
    CHECK(cpu.norm > 0.05);  // clipping did scale the gradients
    CHECK(same_bits(cpu.loss, chk.loss));
    CHECK(same_bits(cpu.grads, chk.grads));
    CHECK(same_bits(cpu.params, chk.params));
    CHECK(same_bits(cpu.m, chk.m));
    CHECK(same_bits(cpu.v, chk.v));
    CHECK(same_bits(cpu.eval_logits, chk.eval_logits));
    CHECK(same_bits(cpu.probs, chk.probs));
  }
}

namespace {
struct PointerMode {
  PointerCheck old = pointer_check();
  explicit PointerMode(PointerCheck m) { set_pointer_check(m); }
  ~PointerMode() { set_pointer_check(old); }
};
}  // namespace

TEST_CASE("checked device: a host pointer planted in a kernel call is caught, naming kernel and argument") {
  register_checked_device();
  const Kernels<float>& k = kernels<float>(Device::Checked);
  const Ctx& ctx = exec_ctx(Device::Checked);
  Arena arena(1 << 16, Device::Checked);
  Tensor x = arena.tensor({4, 3}, DType::F32), out = arena.tensor({2, 3}, DType::F32), dev_rows = arena.tensor({2}, DType::I32);
  const float xv[12] = {0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32};
  const int32_t host_rows[2] = {3, 1};
  from_host(x, xv);
  from_host(dev_rows, host_rows);
  reset_checked_counters();
  // Device -> host direction: the planted host index array (what the dispatcher passed before).
  CHECK_THROWS_WITH_AS(k.gather_rows_forward(ctx, out.dev_ptr<float>(), x.dev_ptr<float>(), host_rows, 2, 3),
                       doctest::Contains("kernel gather_rows_forward argument 3 (int32_t*) is host memory"), Error);
  CHECK(misplaced_pointers() == 1);
  // The same rows from the pool pass, and give the gathered rows.
  k.gather_rows_forward(ctx, out.dev_ptr<float>(), x.dev_ptr<float>(), dev_rows.dev_ptr<int32_t>(), 2, 3);
  CHECK(to_host_vector<float>(out) == std::vector<float>{30, 31, 32, 10, 11, 12});
  CHECK(misplaced_pointers() == 1);
  {
    // Without the check the CPU kernel under the checked table reads host memory and stays
    // green: exactly the mistake a GPU would turn into an illegal address.
    PointerMode off(PointerCheck::Off);
    zero(out);
    k.gather_rows_forward(ctx, out.dev_ptr<float>(), x.dev_ptr<float>(), host_rows, 2, 3);
    CHECK(to_host_vector<float>(out) == std::vector<float>{30, 31, 32, 10, 11, 12});
    CHECK(misplaced_pointers() == 1);  // and nobody counted it
  }
  {
    PointerMode count(PointerCheck::Count);  // count mode counts and lets the call run
    k.gather_rows_forward(ctx, out.dev_ptr<float>(), x.dev_ptr<float>(), host_rows, 2, 3);
    CHECK(misplaced_pointers() == 2);
  }
  // Host -> device direction: grouped_linear's offsets are documented HOST memory; pool memory
  // there is refused (a GPU backend reads them on the host), and host offsets pass.
  Tensor w = arena.tensor({1, 3, 3}, DType::F32, true), y = arena.tensor({4, 3}, DType::F32);
  Tensor dev_off = arena.tensor({2}, DType::I32);
  const int32_t host_off[2] = {0, 4};
  from_host(dev_off, host_off);
  CHECK_THROWS_WITH_AS(k.grouped_linear_forward(ctx, y.dev_ptr<float>(), x.dev_ptr<float>(), w.dev_ptr<float>(),
                                                dev_off.dev_ptr<int32_t>(), 1, 3, 3),
                       doctest::Contains("argument 4 (int32_t*) is checked-device memory where the kernel table "
                                         "documents HOST memory"),
                       Error);
  CHECK_NOTHROW(k.grouped_linear_forward(ctx, y.dev_ptr<float>(), x.dev_ptr<float>(), w.dev_ptr<float>(), host_off,
                                         1, 3, 3));
  // A host output pointer is caught as well (any argument, not only indices).
  std::vector<float> host_out(6);
  CHECK_THROWS_WITH_AS(k.gather_rows_forward(ctx, host_out.data(), x.dev_ptr<float>(), dev_rows.dev_ptr<int32_t>(), 2, 3),
                       doctest::Contains("argument 1 (float*) is host memory"), Error);
}

TEST_CASE("checked device: the row ops refuse index tensors on another device, naming the argument") {
  register_checked_device();
  Arena arena(1 << 16, Device::Checked);
  Tape tape(arena);
  Var x = leaf_on(tape, {4, 3}, randf(12, 2));
  const int rows[2] = {3, 1};
  Tensor host_rows{const_cast<int*>(rows), Shape{2}, DType::I32, Device::CPU};
  CHECK_THROWS_WITH_AS(gather_rows(tape, x, host_rows), doctest::Contains("gather_rows: rows is on cpu"), Error);
  CHECK_NOTHROW(gather_rows(tape, x, ids_on(tape, rows, 2, Device::Checked)));
}

TEST_CASE("checked device: a training step passes no host pointer and makes one host sync per MoE layer") {
  register_checked_device();
  // Count mode: the step runs to the end and reports every misplaced pointer (Fail, the default,
  // would stop at the first). Before issue 21 this step passed host index arrays to the kernels.
  PointerMode count(PointerCheck::Count);
  auto syncs = [](int layers) {
    ModelConfig c = small_lm();
    c.layers = layers;
    const int B = 2, T = 6;
    std::vector<int> in(B * T), tg(B * T);
    for (int i = 0; i < B * T; ++i) in[i] = (i * 7 + 3) % 17, tg[i] = (i * 5 + 1) % 17;
    LocalDispatcher disp(4);
    LM lm(c, disp, Device::Checked);
    lm.init(11);
    Arena arena(1 << 20, Device::Checked);
    Tape tape(arena);
    ForwardStats st;
    std::vector<int> ks(size_t(layers), 2);
    reset_checked_counters();
    Var loss = lm.forward(tape, in.data(), tg.data(), B, T, ks, &st);
    tape.backward(loss);
    const int64_t n = host_syncs();
    CHECK(misplaced_pointers() == 0);
    CHECK(st.layers.back().assignments == int64_t(B) * T * 2);  // the stats still arrive
    CHECK(st.layers.back().lb > 0);
    return n;
  };
  const int64_t s2 = syncs(2), s4 = syncs(4), s5 = syncs(5);
  MESSAGE("host syncs of a training forward+backward: " << s2 << " at L=2, " << s4 << " at L=4");
  CHECK((s4 - s2) == 2 * 1);  // one per MoE layer: the routed ids the dispatch plan is built from
  CHECK((s5 - s4) == 1);
  // And the rest is per step, not per layer: token-id checks of the embedding and the loss, the
  // router losses of all layers in one copy, the logged CE and aux.
  CHECK(s2 - 2 == 5);
}

TEST_CASE("parallel init gives the bits of the naive serial loop, on the CPU and on the checked device") {
  register_checked_device();
  ModelConfig c = small_lm();
  c.vocab = 300;
  c.dim = 256;  // wte (300,256): above the init's parallel threshold, split over the threads
  c.heads = 4;
  LocalDispatcher disp(4);
  LM cpu(c, disp, Device::CPU), chk(c, disp, Device::Checked);
  cpu.init(29);
  chk.init(29);
  const double out_std = c.init_std / std::sqrt(2.0 * c.layers);
  int64_t compared = 0;
  for (int id = 0; id < cpu.params().size(); ++id) {
    const std::string& n = cpu.params().info(id).name;
    CAPTURE(n);
    const bool norm = n == "lnf" || n.ends_with(".ln1") || n.ends_with(".ln2");
    const double sd = n.ends_with(".attn.wo") || n.ends_with(".experts.w2") ? out_std : c.init_std;
    std::vector<float> want(size_t(cpu.params().value(id).numel()));
    for (size_t i = 0; i < want.size(); ++i)  // one thread, one element at a time
      want[i] = norm ? 1.0f : float(sd * normal_from(hash_key(29, hash_name(n), uint64_t(i))));
    CHECK(same_bits(want, host<float>(cpu.params().value(id))));
    CHECK(same_bits(want, host<float>(chk.params().value(id))));
    compared += int64_t(want.size());
  }
  CHECK(compared > 100000);
}
