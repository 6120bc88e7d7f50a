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
#include "test_util.h"

using namespace anyk;

namespace {

const Ctx kCtx{};

std::vector<float> rand_f(size_t n, uint64_t seed) {
  auto d = test::randn(n, seed, 1.0);
  return std::vector<float>(d.begin(), d.end());
}

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
