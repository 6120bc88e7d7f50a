// The bf16 activation storage check (Tape::set_activation_storage), shared by the unit suite
// (tests/test_bf16_storage.cpp: the CPU and the checked device) and the GPU suite
// (tests/test_gpu_bf16_storage.cpp: CUDA). The property, for every op that stores activations:
// with bf16 storage, the op computes exactly what the f32 op computes from the bf16-rounded
// inputs, its output is that result rounded to bf16 (nearest even), and the gradients of its
// inputs equal, bit for bit, the f32 op's gradients from the same rounded inputs and the same
// output gradients. The reference is the same device's f32 path; the rounding reference is
// round_bf16 below (written here, independent of the kernels' to_bf16).
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "model/moe_ops.h"
#include "parallel/all_to_all.h"
#include "parallel/comm.h"
#include "runtime/device.h"
#include "runtime/ops/ops.h"
#include "runtime/tape.h"
#include "runtime/rng.h"
#include "test_util.h"

namespace anyk::test::bf16s {

// Round-to-nearest-even to bf16 (NaN kept as a NaN), as bits and as the float it stands for.
inline uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if (std::isnan(x)) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float from_bits(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline float round_bf16(float x) { return from_bits(bf16_bits(x)); }

inline std::vector<double> normal(size_t n, uint64_t seed, double scale) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * normal_from(hash_key(seed, 0x6bf16, uint64_t(i)));
  return v;
}

// Writes v (as f32, or as bf16 bits when t is stored in bf16) into t on any device.
inline void put(const Tensor& t, const std::vector<double>& v) {
  REQUIRE(int64_t(v.size()) == t.numel());
  if (t.dtype == DType::BF16) {
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = bf16_bits(float(v[i]));
    if (!b.empty()) from_host(t, b.data());
  } else {
    REQUIRE(t.dtype == DType::F32);
    std::vector<float> f(v.begin(), v.end());
    if (!f.empty()) from_host(t, f.data());
  }
}
// Reads t (f32, f64 or bf16) from any device as doubles.
inline std::vector<double> get(const Tensor& t) {
  std::vector<double> v(size_t(t.numel()));
  if (v.empty()) return v;
  if (t.dtype == DType::BF16) {
    std::vector<uint16_t> b(v.size());
    to_host(b.data(), t);
    for (size_t i = 0; i < v.size(); ++i) v[i] = from_bits(b[i]);
  } else if (t.dtype == DType::F32) {
    std::vector<float> f(v.size());
    to_host(f.data(), t);
    v.assign(f.begin(), f.end());
  } else {
    REQUIRE(t.dtype == DType::F64);
    to_host(v.data(), t);
  }
  return v;
}

struct In {
  Shape shape;
  bool act;  // an activation (stored in bf16 under bf16 storage); else a parameter (always f32)
  double scale = 1.0;
};
struct Case {
  std::string op, variant;
  std::vector<In> in;
  bool bf16_out;  // whether the outputs are stored in bf16 under bf16 storage
  std::function<std::vector<Var>(Tape&, std::vector<Var>&)> f;
};

inline const int kIds[6] = {3, 0, 3, 1, 4, 2};
inline const int kTargets[4] = {2, 0, 4, 1};
inline const int kRows[7] = {2, 0, 2, 1, 3, 0, 2};
inline const int kTok[5] = {1, 0, 1, 2, 0};
inline const int kWidx[5] = {3, 0, 2, 4, 1};
inline const int kOffsets[4] = {0, 3, 3, 7};
inline const int kSelf[1] = {4};

// Every op that takes or makes activations. Larger-than-gradcheck sizes where rounding matters.
inline std::vector<Case> cases() {
  std::vector<Case> t;
  using V = std::vector<Var>;
  t.push_back({"embedding", "ids into V=5", {{{5, 8}, false}}, true,
               [](Tape& tp, V& in) { return V{embedding(tp, kIds, 6, in[0])}; }});
  t.push_back({"linear", "x (3,2,16) w (12,16)", {{{3, 2, 16}, true}, {{12, 16}, false, 0.3}}, true,
               [](Tape& tp, V& in) { return V{linear(tp, in[0], in[1])}; }});
  t.push_back({"add", "bf16 + bf16, and bf16 + f32 parameter", {{{4, 9}, true}, {{4, 9}, true}, {{4, 9}, false}},
               true, [](Tape& tp, V& in) { return V{add(tp, in[0], in[1]), add(tp, in[2], in[0])}; }});
  t.push_back({"scale", "s = -0.7", {{{3, 11}, true}}, true,
               [](Tape& tp, V& in) { return V{scale(tp, in[0], -0.7)}; }});
  t.push_back({"rmsnorm", "x (5,24) and w", {{{5, 24}, true, 3.0}, {{24}, false}}, true,
               [](Tape& tp, V& in) { return V{rmsnorm(tp, in[0], in[1], 1e-5)}; }});
  t.push_back({"rope", "2 of 3 heads rotated", {{{2, 5, 3, 8}, true}}, true,
               [](Tape& tp, V& in) { return V{rope(tp, in[0], 2, 100.0)}; }});
  t.push_back({"attention", "B=2 T=7 C=16 NH=2", {{{2, 7, 48}, true}}, true,
               [](Tape& tp, V& in) { return V{attention(tp, in[0], 2)}; }});
  t.push_back({"swiglu", "M=5 H=12", {{{5, 24}, true, 1.5}}, true,
               [](Tape& tp, V& in) { return V{swiglu(tp, in[0])}; }});
  t.push_back({"cross_entropy", "bf16 logits, f32 loss", {{{4, 5}, true, 2.0}}, false,
               [](Tape& tp, V& in) { return V{cross_entropy(tp, in[0], kTargets)}; }});
  t.push_back({"gather_rows", "repeated rows", {{{4, 10}, true}}, true,
               [](Tape& tp, V& in) { return V{gather_rows(tp, in[0], ids_on(tp, kRows, 7, in[0].val.device))}; }});
  t.push_back({"scatter_add_rows", "weighted by f32 gates", {{{5, 10}, true}, {{5}, false}}, true,
               [](Tape& tp, V& in) { return V{scatter_add_rows(tp, in[0], &in[1], ids_on(tp, kTok, 5, in[0].val.device), ids_on(tp, kWidx, 5, in[0].val.device), 3)}; }});
  t.push_back({"grouped_linear", "3 experts, one empty", {{{7, 16}, true}, {{3, 10, 16}, false, 0.3}}, true,
               [](Tape& tp, V& in) { return V{grouped_linear(tp, in[0], in[1], host_i32(kOffsets, 4))}; }});
  t.push_back({"all_to_all_rows", "one rank: bf16 rows pass through", {{{4, 10}, true}}, true,
               [](Tape& tp, V& in) {
                 static Comm self = Comm::self();
                 const Tensor counts{const_cast<int*>(kSelf), {1}, DType::I32};
                 return V{all_to_all_rows(tp, in[0], counts, counts, self)};
               }});
  t.push_back({"linear", "router logits under Tape::F32Scope stay f32", {{{6, 16}, true}, {{5, 16}, false}}, false,
               [](Tape& tp, V& in) {
                 Tape::F32Scope keep(tp);
                 return V{linear(tp, in[0], in[1])};
               }});
  return t;
}

struct Result {
  std::vector<std::vector<double>> out, grad;
  std::vector<bool> out_bf16;
};

// One forward and backward of the case on device dev: inputs from fixed seeds (activations
// rounded to bf16 in both modes, so both paths see the same values), output gradients seeded
// with fixed values.
inline Result run_case(const Case& c, Device dev, bool bf16) {
  Arena arena(size_t(1) << 20, dev);
  Tape tape(arena);
  if (bf16) tape.set_activation_storage(DType::BF16);
  std::vector<Var> in;
  for (size_t i = 0; i < c.in.size(); ++i) {
    const In& s = c.in[i];
    std::vector<double> v = normal(size_t(s.shape.numel()), 17 + i, s.scale);
    if (s.act)
      for (double& x : v) x = round_bf16(float(x));
    Var x = s.act ? tape.make_act(s.shape, DType::F32, true) : tape.make(s.shape, DType::F32, true);
    CHECK(x.stored_bf16() == (bf16 && s.act));
    put(x.val, v);
    in.push_back(x);
  }
  std::vector<Var> outs = c.f(tape, in);
  Result r;
  for (size_t o = 0; o < outs.size(); ++o) {
    REQUIRE(outs[o].requires_grad());
    REQUIRE(outs[o].grad.dtype == DType::F32);
    put(outs[o].grad, normal(size_t(outs[o].val.numel()), 1000 + o, 1.0));
  }
  tape.backward_seeded();
  for (const Var& o : outs) {
    r.out.push_back(get(o.val));
    r.out_bf16.push_back(o.stored_bf16());
  }
  for (const Var& x : in) r.grad.push_back(get(x.grad));
  return r;
}

// The property above, for every case, on device dev.
inline void check_all_cases(Device dev) {
  for (const Case& c : cases()) {
    CAPTURE(c.op);
    CAPTURE(c.variant);
    const Result ref = run_case(c, dev, false), got = run_case(c, dev, true);
    REQUIRE(ref.out.size() == got.out.size());
    for (size_t o = 0; o < ref.out.size(); ++o) {
      CAPTURE(o);
      CHECK_FALSE(ref.out_bf16[o]);
      CHECK(got.out_bf16[o] == c.bf16_out);
      REQUIRE(ref.out[o].size() == got.out[o].size());
      int64_t diff = 0, changed = 0;
      for (size_t j = 0; j < ref.out[o].size(); ++j) {
        const double want = c.bf16_out ? double(round_bf16(float(ref.out[o][j]))) : ref.out[o][j];
        diff += want != got.out[o][j];
        changed += want != ref.out[o][j];
      }
      CHECK(diff == 0);
      // Not vacuous: rounding to bf16 changed most of an f32 result (row movement only copies
      // values that are bf16 already).
      const bool copies = c.op == "gather_rows" || c.op == "all_to_all_rows";
      if (c.bf16_out && !copies) CHECK(changed * 2 > int64_t(ref.out[o].size()));
    }
    for (size_t i = 0; i < ref.grad.size(); ++i) {
      CAPTURE(i);
      int64_t diff = 0;
      double mx = 0;
      for (size_t j = 0; j < ref.grad[i].size(); ++j) {
        diff += ref.grad[i][j] != got.grad[i][j];
        mx = std::max(mx, std::abs(ref.grad[i][j]));
      }
      CHECK(diff == 0);
      CHECK(mx > 1e-3);  // a gradient reached the input
    }
  }
}

}  // namespace anyk::test::bf16s
