// Decode from bf16 weights (model/generate.h DecodeWeights::bf16). The kernel
// (cpu::linear_rows_forward_bf16): against a naive loop in double over the widened weights, bit for
// bit the f32 few-row kernel over the widened weights, and each output's bits independent of the
// other rows of the call. The decoder in bf16 mode: bit for bit an f32 decoder whose matrices were
// first rounded through bf16 (the independent reference), and within a bound of the f32 decoder's
// logits (bf16 keeps 8 significant bits: each weight moves by at most 2^-9 of itself).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "kernels/kernels.h"
#include "model/generate.h"
#include "runtime/rng.h"
#include "test_util.h"

using namespace anyk;

namespace {

const Ctx kCtx{};

std::vector<float> rand_f(size_t n, uint64_t seed) { return test::randn_as<float>(n, seed); }

std::vector<uint16_t> rand_bf16(size_t n, uint64_t seed) {
  auto f = rand_f(n, seed);
  std::vector<uint16_t> b(n);
  cpu::to_bf16(b.data(), f.data(), int64_t(n));
  return b;
}

// bf16 bits to f32, written here (not from_bf16): the upper half of the f32's bits.
float widen(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

}  // namespace

TEST_CASE("bf16 few-row kernel: a naive loop in double over the widened weights, and the f32 kernel's bits") {
  const auto& k = kernels<float>(Device::CPU);
  for (int I : {1, 7, 8, 15, 16, 31, 33, 37, 256, 259, 1024})
    for (int O : {1, 3, 4, 5, 17})
      for (int M = 1; M <= 12; ++M) {
        CAPTURE(I);
        CAPTURE(O);
        CAPTURE(M);
        auto x = rand_f(size_t(M) * I, 11 + uint64_t(I));
        auto w = rand_bf16(size_t(O) * I, 23 + uint64_t(O));
        std::vector<float> wf(w.size());
        for (size_t i = 0; i < w.size(); ++i) wf[i] = widen(w[i]);
        std::vector<float> out(size_t(M) * O, -99.f), ref32(size_t(M) * O, -99.f);
        cpu::linear_rows_forward_bf16(out.data(), x.data(), w.data(), M, I, O);
        double worst = 0;
        for (int m = 0; m < M; ++m)
          for (int o = 0; o < O; ++o) {
            double ref = 0, mag = 0;
            for (int i = 0; i < I; ++i) {
              const double p = double(x[size_t(m) * I + i]) * double(wf[size_t(o) * I + i]);
              ref += p;
              mag += std::fabs(p);
            }
            worst = std::max(worst, std::fabs(double(out[size_t(m) * O + o]) - ref) / (mag + 1e-30));
          }
        CHECK(worst < 1e-5);
        // The f32 kernel over the widened weights sums the same products in the same order.
        k.linear_rows_forward(kCtx, ref32.data(), x.data(), wf.data(), M, I, O);
        CHECK(same_bits(out.data(), ref32.data(), out.size()));
      }
}

TEST_CASE("bf16 few-row kernel: an output's bits do not depend on the other rows of the call") {
  for (int I : {37, 256, 1024}) {  // 256, 1024: f32 input rows of 1 and 4 KiB, copied apart from 5 rows
    CAPTURE(I);
    const int M = 12, O = 11;
    auto x = rand_f(size_t(M) * I, 5);
    auto w = rand_bf16(size_t(O) * I, 6);
    std::vector<float> all(size_t(M) * O);
    cpu::linear_rows_forward_bf16(all.data(), x.data(), w.data(), M, I, O);
    for (int mb = 1; mb <= M; ++mb)
      for (int m0 : {0, M - mb}) {
        std::vector<float> part(size_t(mb) * O);
        cpu::linear_rows_forward_bf16(part.data(), x.data() + size_t(m0) * I, w.data(), mb, I, O);
        CHECK(same_bits(part.data(), all.data() + size_t(m0) * O, size_t(mb) * O));
      }
    std::vector<float> tail(size_t(M) * 2);  // weight rows 9..10 alone (a partial block)
    cpu::linear_rows_forward_bf16(tail.data(), x.data(), w.data() + size_t(9) * I, M, I, 2);
    for (int m = 0; m < M; ++m) CHECK(same_bits(tail.data() + size_t(m) * 2, all.data() + size_t(m) * O + 9, 2));
  }
}

namespace {

ModelConfig small_f32() {
  ModelConfig c;
  c.vocab = 72;
  c.dim = 40;  // not a multiple of 16 or 32: the kernels' tails; D = 10
  c.layers = 3;
  c.heads = 4;
  c.experts = 4;
  c.expert_hidden = 28;
  c.seq_len = 32;
  c.init_std = 0.15;  // logits of order one
  c.dtype = DType::F32;
  return c;
}

struct Model {
  LocalDispatcher disp;
  LM lm;
  Model(const ModelConfig& c, uint64_t seed) : disp(c.experts), lm(c, disp) { lm.init(seed); }
};

// x rounded to 8 significant bits, to nearest, ties to even (the rounding mode's nearbyint): bf16's
// value, computed on the mantissa rather than the bits.
float round_bf16(float x) {
  int e = 0;
  const double m = std::frexp(double(x), &e);  // x = m 2^e, |m| in [0.5, 1)
  return float(std::ldexp(std::nearbyint(m * 256.0) / 256.0, e));
}

// The same weights with the matrices bf16 mode reads (wte, wqkv, wo, w13, w2) rounded to bf16.
void round_matrices(LM& lm) {
  ParamStore& ps = lm.params();
  std::vector<std::string> names{"wte"};
  for (int l = 0; l < lm.config().layers; ++l)
    for (const char* s : {".attn.wqkv", ".attn.wo", ".moe.experts.w13", ".moe.experts.w2"})
      names.push_back("layers." + std::to_string(l) + s);
  for (const auto& n : names) {
    Tensor v = ps.value(ps.find(n));
    float* p = v.dev_ptr<float>();
    for (int64_t i = 0; i < v.numel(); ++i) p[i] = round_bf16(p[i]);
  }
}

std::vector<int> tokens(int n, int vocab, uint64_t seed) {
  CounterRng r(seed, 3);
  std::vector<int> t(static_cast<size_t>(n));
  for (auto& v : t) v = int(r.next() % uint64_t(vocab));
  return t;
}

// Every logit of a prompt pass of 20 tokens on slot 0 and 3 on slot 1 (20 + 3 rows: the GEMM
// path, or the few-row kernel when row-invariant), then 6 decode steps of both (the few-row path).
std::vector<double> run(const LM& lm, DecodeWeights w, bool row_invariant) {
  KVDecoder dec(lm, 2, 0, w);
  dec.set_row_invariant(row_invariant);
  const int V = lm.config().vocab;
  auto a = tokens(26, V, 1), b = tokens(9, V, 2);
  InferenceK k{{2, 1, 3}, 0};
  std::vector<double> all, lg;
  Segment s0[2] = {{0, a.data(), 20}, {1, b.data(), 3}};
  dec.forward({s0, 2}, k, lg, true);
  all = lg;
  for (int t = 0; t < 6; ++t) {
    Segment s[2] = {{0, a.data() + 20 + t, 1}, {1, b.data() + 3 + t, 1}};
    dec.forward({s, 2}, k, lg);
    all.insert(all.end(), lg.begin(), lg.end());
  }
  return all;
}

}  // namespace

TEST_CASE("bf16 decode: bit for bit an f32 decoder over the weights rounded to bf16") {
  Model m(small_f32(), 7), r(small_f32(), 7);
  round_matrices(r.lm);
  for (bool ri : {false, true}) {
    CAPTURE(ri);
    auto b16 = run(m.lm, DecodeWeights::bf16, ri);
    auto ref = run(r.lm, DecodeWeights::f32, ri);
    REQUIRE(b16.size() == ref.size());
    double worst = 0;
    for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(b16[i] - ref[i]));
    MESSAGE("bf16 decode vs f32 over rounded weights: max |diff| " << worst << " over " << ref.size() << " logits");
    CHECK(worst == 0);
  }
  // generate(): the same tokens (sampled, so every logit counts).
  GenerateOptions o;
  o.k = InferenceK{{1, 2, 1}, 0};
  o.max_new = 12;
  o.sample.temperature = 1;
  o.sample.seed = 3;
  const std::vector<std::vector<int>> prompts{tokens(5, 72, 4), tokens(9, 72, 5)};
  auto t32 = generate(r.lm, prompts, o);
  o.weights = DecodeWeights::bf16;
  CHECK(generate(m.lm, prompts, o) == t32);
}

TEST_CASE("bf16 decode: logits within the bound of bf16's rounding of the f32 decoder's") {
  Model m(small_f32(), 7);
  auto b16 = run(m.lm, DecodeWeights::bf16, false);
  auto f32 = run(m.lm, DecodeWeights::f32, false);
  REQUIRE(b16.size() == f32.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < f32.size(); ++i) {
    worst = std::max(worst, std::fabs(b16[i] - f32[i]));
    scale = std::max(scale, std::fabs(f32[i]));
  }
  MESSAGE("bf16 vs f32 decode: max |diff| " << worst << ", max |logit| " << scale);
  // Each weight moves by at most 2^-9 of itself (half of bf16's 2^-8 spacing), so each stage that
  // reads weights perturbs the residual stream by about 2^-9 relative; a logit passes 8 of them
  // (the embedding, 3 layers' attention and experts, the head). Budget: 8 x 2^-9 x max |logit|.
  // Measured 0.0249 at max |logit| 4.72, i.e. 2.7 x 2^-9 x max |logit| (GCC 12, x86-64-v3).
  CHECK(worst > 0);  // the bf16 copy is read
  CHECK(worst < 8 * std::ldexp(1.0, -9) * scale);
}

TEST_CASE("bf16 decode weights: refused for an f64 model, with a hint") {
  ModelConfig c = small_f32();
  c.dtype = DType::F64;
  Model m(c, 7);
  CHECK_THROWS_WITH_AS(KVDecoder(m.lm, 1, 0, DecodeWeights::bf16),
                       doctest::Contains("bf16 decode weights need an f32 model on the CPU"), std::exception);
}
