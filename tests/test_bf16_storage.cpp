// bf16 activation storage (--precision bf16; Tape::set_activation_storage): every op that stores
// activations computes, on the CPU and on the checked device, exactly the f32 op on bf16-rounded
// inputs, rounds its output to bf16, and gives bit-identical gradients (tests/bf16_storage_cases.h).
// Also: the storage really is 2 bytes per value, the scratch for widened copies is given back
// after every op (it does not grow with depth), the router refuses bf16 logits, f64 models are
// unaffected, and the arena's mark/release rewinds exactly.
#include <doctest/doctest.h>

#include "bf16_storage_cases.h"
#include "kernels/kernels.h"
#include "runtime/checked_device.h"
#include "runtime/devices.h"
#include "model/moe.h"

using namespace anyk;
using namespace anyk::test::bf16s;

TEST_CASE("bf16 storage: every activation op equals the f32 op on rounded inputs, on the CPU") {
  check_all_cases(Device::CPU);
}

TEST_CASE("bf16 storage: the same on the checked device (kernels on memory the host cannot read)") {
  use_device(Device::Checked, false);
  check_all_cases(Device::Checked);
}

TEST_CASE("bf16 storage: the test's rounding reference is round-to-nearest-even") {
  CHECK(round_bf16(1.0f) == 1.0f);
  CHECK(round_bf16(1.0f + 1.0f / 256) == 1.0f);             // halfway, to even (down)
  CHECK(round_bf16(1.0f + 3.0f / 256) == 1.0f + 4.0f / 256);  // halfway, to even (up)
  CHECK(round_bf16(1.0f + 1.5f / 256) == 1.0f + 2.0f / 256);  // above halfway: up
  CHECK(std::isnan(round_bf16(std::nanf(""))));
  // The CPU kernel agrees with it on values that exercise every rounding case.
  std::vector<float> x = {1.0f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.7182818f, 3.0e38f, 1e-40f, 0.0f, -0.0f};
  for (double v : normal(1000, 5, 10.0)) x.push_back(float(v));
  std::vector<uint16_t> b(x.size());
  kernels<float>(Device::CPU).to_bf16(exec_ctx(Device::CPU), b.data(), x.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    CAPTURE(x[i]);
    CHECK(b[i] == bf16_bits(x[i]));
  }
}

TEST_CASE("bf16 storage: values take 2 bytes, gradients stay f32, f64 is unaffected") {
  Arena arena(size_t(1) << 20);
  Tape tape(arena);
  tape.set_activation_storage(DType::BF16);
  const size_t before = arena.used();
  Var a = tape.make_act({1024, 64}, DType::F32, false);
  CHECK(a.val.dtype == DType::BF16);
  CHECK(a.dtype() == DType::F32);  // the compute dtype
  CHECK(arena.used() - before <= 1024 * 64 * 2 + 64);
  Var g = tape.make_act({8, 8}, DType::F32, true);
  CHECK(g.grad.dtype == DType::F32);
  Var d = tape.make_act({8, 8}, DType::F64, true);  // f64 (the gradient-check path) stays f64
  CHECK(d.val.dtype == DType::F64);
  Var l = tape.make({8}, DType::F32, false);  // make(): kept in its compute dtype
  CHECK(l.val.dtype == DType::F32);
  {
    Tape::F32Scope keep(tape);
    CHECK(tape.make_act({8}, DType::F32, false).val.dtype == DType::F32);
  }
  CHECK(tape.make_act({8}, DType::F32, false).val.dtype == DType::BF16);  // restored
  CHECK_THROWS_WITH_AS(tape.set_activation_storage(DType::F64), doctest::Contains("f32 or bf16"), Error);
}

TEST_CASE("bf16 storage: the scratch is given back after every op, so it does not grow with depth") {
  auto chain = [](int depth, size_t* arena_used) {
    Arena arena(size_t(1) << 20);
    Tape tape(arena);
    tape.set_activation_storage(DType::BF16);
    Var w = tape.make({64, 64}, DType::F32, true), n = tape.make({64}, DType::F32, true);
    put(w.val, normal(64 * 64, 3, 0.1));
    put(n.val, std::vector<double>(64, 1.0));
    Var x = tape.make_act({128, 64}, DType::F32, true);
    put(x.val, normal(128 * 64, 4, 1.0));
    for (int i = 0; i < depth; ++i) x = rmsnorm(tape, linear(tape, x, w), n, 1e-5);
    put(x.grad, normal(128 * 64, 5, 1.0));
    tape.backward_seeded();
    *arena_used = arena.used();
    return tape.scratch_high_water();
  };
  size_t used2 = 0, used8 = 0;
  const size_t s2 = chain(2, &used2), s8 = chain(8, &used8);
  CHECK(s2 > 0);
  CHECK(s8 == s2);              // one op's widened input and output at a time, whatever the depth
  CHECK(s2 <= 2 * 128 * 64 * 4 + 4096);
  CHECK(used8 > used2);         // while the stored activations do grow with depth
}

TEST_CASE("bf16 storage: the router refuses bf16 logits; Router::forward keeps them f32") {
  Arena arena(size_t(1) << 20);
  Tape tape(arena);
  tape.set_activation_storage(DType::BF16);
  Var logits = tape.make_act({4, 5}, DType::F32, true);
  put(logits.val, normal(20, 1, 1.0));
  RouterOptions o;
  CHECK_THROWS_WITH_AS(router_gating(tape, logits, 2, o), doctest::Contains("logits are stored in bf16"), Error);

  ParamStore ps(DType::F32);
  Router r(ps, "l0", 8, 5);
  ps.finalize();
  put(ps.value(0), normal(40, 2, 0.3));
  Var x = tape.make_act({4, 8}, DType::F32, true);
  put(x.val, normal(32, 3, 1.0));
  RouterOut out = r.forward(tape, x, 2, o);  // would throw had the logits been stored in bf16
  CHECK(out.probs.dtype == DType::F32);
  CHECK(out.weights.val.dtype == DType::F32);
  CHECK(tape.activations_bf16());  // the scope ended
}

TEST_CASE("arena mark/release rewinds exactly and keeps the high-water mark") {
  Arena a(4096);
  void* p0 = a.alloc(100);
  const Arena::Mark m = a.mark();
  const size_t used = a.used();
  void* p1 = a.alloc(3000);
  void* p2 = a.alloc(5000);  // a second chunk
  const size_t hw = a.high_water();
  a.release(m);
  CHECK(a.used() == used);
  CHECK(a.high_water() == hw);
  CHECK(a.alloc(3000) == p1);  // the same memory again
  CHECK(a.alloc(5000) == p2);
  CHECK(a.num_chunks() == 2);  // nothing new was allocated
  (void)p0;
}
