// The kernel table (kernels/kernels.h): every CPU entry is set, an unregistered device is
// refused, and each element-wise / reduction / optimizer / conversion kernel matches a naive
// loop (bf16 against an independent reference that picks the nearest bf16 in double).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/kernels.h"
#include "runtime/arena.h"
#include "runtime/tensor.h"
#include "test_util.h"

using namespace anyk;

namespace {

const Ctx kCtx{};

std::vector<float> randf(size_t n, uint64_t seed) { return test::randn_as<float>(n, seed, 2.0); }

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Independent reference: the two bf16 values around x (truncation and the next one up in
// magnitude), compared in double; ties go to the even mantissa.
uint16_t bf16_reference(float x) {
  if (std::isinf(x)) return uint16_t(bits_of(x) >> 16);
  uint16_t lo = uint16_t(bits_of(x) >> 16);  // truncation: the neighbour nearer zero
  uint16_t hi = uint16_t(lo + 1);            // the neighbour further from zero
  double a = from_bits(uint32_t(lo) << 16);
  // Past the largest finite bf16 the next value is +-2^128 (it rounds to infinity).
  double b = (hi & 0x7f80) == 0x7f80 ? std::copysign(std::ldexp(1.0, 128), double(x))
                                     : double(from_bits(uint32_t(hi) << 16));
  double dl = std::abs(double(x) - a), dh = std::abs(double(x) - b);
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) ? hi : lo;
}

}  // namespace

TEST_CASE("the CPU tables are complete and an unregistered device is refused") {
  auto check_complete = [](const auto& k, bool conversions) {
    const void* const* p = reinterpret_cast<const void* const*>(&k);
    size_t n = sizeof(k) / sizeof(void*);
    for (size_t i = 0; i < n; ++i) {
      bool conv_slot = i >= n - 2;  // to_bf16, from_bf16 close the table
      if (conv_slot && !conversions) continue;
      CAPTURE(i);
      CHECK(p[i] != nullptr);
    }
  };
  check_complete(kernels<float>(Device::CPU), true);
  check_complete(kernels<double>(Device::CPU), false);
  CHECK_THROWS(kernels<float>(Device::CUDA));
}

TEST_CASE("fill, copy, accumulate, fill_div, sum_div match naive loops") {
  const auto& k = kernels<float>(Device::CPU);
  for (int64_t n : {0, 1, 7, 70000}) {
    CAPTURE(n);
    auto a = randf(size_t(n), 1), b = randf(size_t(n), 2);
    std::vector<float> out(size_t(n), -1.0f);
    k.fill(kCtx, out.data(), 2.5f, n);
    for (float v : out) CHECK(v == 2.5f);
    k.copy(kCtx, out.data(), a.data(), n);
    CHECK(out == a);
    std::vector<float> y = b;
    k.accumulate(kCtx, y.data(), a.data(), n);
    for (int64_t i = 0; i < n; ++i) CHECK(y[i] == b[i] + a[i]);
    if (n == 0) continue;
    float s = 3.0f;
    k.fill_div(kCtx, out.data(), &s, 7.0, n);
    for (float v : out) CHECK(v == 3.0f / 7.0f);
    double ref = 0;
    for (float v : a) ref += v;
    float got = 0;
    k.sum_div(kCtx, &got, a.data(), n, 3.0);
    CHECK(got == float(ref / 3.0));
  }
}

TEST_CASE("sumsq_accumulate adds the sum of squares in double, the same for any split") {
  const auto& k = kernels<float>(Device::CPU);
  auto a = randf(200000, 3);
  double acc = 1.5;
  k.sumsq_accumulate(kCtx, &acc, a.data(), int64_t(a.size()));
  double ref = 0;
  for (float v : a) ref += double(v) * v;
  CHECK(acc - 1.5 == doctest::Approx(ref).epsilon(1e-12));
}

TEST_CASE("first_bad_id finds the first id outside [0, V)") {
  const auto& k = kernels<float>(Device::CPU);
  std::vector<int32_t> ids = {0, 3, 4, 9, -1, 2};
  CHECK(k.first_bad_id(kCtx, ids.data(), 3, 5) == -1);
  CHECK(k.first_bad_id(kCtx, ids.data(), int64_t(ids.size()), 5) == 3);
  CHECK(k.first_bad_id(kCtx, ids.data(), int64_t(ids.size()), 10) == 4);
  CHECK(k.first_bad_id(kCtx, ids.data(), 0, 1) == -1);
}

TEST_CASE("adamw_update matches the textbook AdamW step in double") {
  const auto& k = kernels<double>(Device::CPU);
  const int64_t n = 40000;
  auto pf = randf(n, 4), gf = randf(n, 5);
  std::vector<double> p(pf.begin(), pf.end()), g(gf.begin(), gf.end()), m(n, 0.1), v(n, 0.2);
  std::vector<double> p0 = p;
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, t = 3;
  const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
  k.adamw_update(kCtx, p.data(), m.data(), v.data(), g.data(), n, b1, b2, eps, 1 - lr * wd, lr / bc1,
                 1 / std::sqrt(bc2));
  for (int64_t i = 0; i < n; i += 997) {
    double mi = b1 * 0.1 + (1 - b1) * g[i], vi = b2 * 0.2 + (1 - b2) * g[i] * g[i];
    double ref = p0[i] - lr * wd * p0[i] - lr * (mi / bc1) / (std::sqrt(vi / bc2) + eps);
    CHECK(m[i] == doctest::Approx(mi).epsilon(1e-14));
    CHECK(v[i] == doctest::Approx(vi).epsilon(1e-14));
    CHECK(p[i] == doctest::Approx(ref).epsilon(1e-12));
  }
}

TEST_CASE("f32 -> bf16 rounds to nearest even, bf16 -> f32 is exact, NaN stays NaN") {
  const auto& k = kernels<float>(Device::CPU);
  std::vector<float> x = randf(50000, 6);
  // Edge cases: exact ties (both parities), zeros, denormals, the largest floats, infinities.
  for (uint32_t b : {0x3f808000u, 0x3f818000u, 0x3f80c000u, 0x00000000u, 0x80000000u, 0x00000001u,
                     0x807fffffu, 0x7f7fffffu, 0xff7fffffu, 0x7f7f7fffu, 0x7f7f8000u, 0x7f800000u,
                     0xff800000u, 0x3f7fffffu, 0x4049fdb0u})
    x.push_back(from_bits(b));
  for (int e = -140; e < 128; e += 3) x.push_back(std::ldexp(1.2345f, e));
  std::vector<uint16_t> h(x.size());
  k.to_bf16(kCtx, h.data(), x.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    CAPTURE(bits_of(x[i]));
    CHECK(h[i] == bf16_reference(x[i]));
  }
  std::vector<float> back(x.size());
  k.from_bf16(kCtx, back.data(), h.data(), int64_t(h.size()));
  for (size_t i = 0; i < x.size(); ++i) CHECK(bits_of(back[i]) == uint32_t(h[i]) << 16);
  // NaNs (quiet, signalling, negative, payload only in the low bits) stay NaN.
  std::vector<float> nans = {from_bits(0x7fc00000u), from_bits(0x7f800001u), from_bits(0xffc00001u),
                             from_bits(0x7f80ffffu)};
  std::vector<uint16_t> hn(nans.size());
  std::vector<float> bn(nans.size());
  k.to_bf16(kCtx, hn.data(), nans.data(), int64_t(nans.size()));
  k.from_bf16(kCtx, bn.data(), hn.data(), int64_t(hn.size()));
  for (float v : bn) CHECK(std::isnan(v));
  CHECK(dtype_size(DType::BF16) == 2);
  CHECK(dtype_of<bf16>() == DType::BF16);
}

TEST_CASE("bf16 tensors: arena storage of 2 bytes per element, converted through the kernels") {
  Arena arena(1 << 16);
  Tensor f = arena.tensor({3, 5}, DType::F32);
  Tensor h = arena.tensor({3, 5}, DType::BF16);
  CHECK(h.bytes() == 30);
  CHECK_THROWS_AS(h.ptr<float>(), Error);  // the dtype is checked
  std::vector<float> x = randf(15, 8);
  std::memcpy(f.ptr<float>(), x.data(), 60);
  const auto& k = kernels<float>(h.device);
  k.to_bf16(kCtx, reinterpret_cast<uint16_t*>(h.dev_ptr<bf16>()), f.dev_ptr<float>(), 15);
  k.from_bf16(kCtx, f.dev_ptr<float>(), reinterpret_cast<const uint16_t*>(h.dev_ptr<bf16>()), 15);
  for (int i = 0; i < 15; ++i) {
    CHECK(bits_of(f.ptr<float>()[i]) == uint32_t(bf16_reference(x[i])) << 16);
    CHECK(std::abs(f.ptr<float>()[i] - x[i]) <= std::abs(x[i]) * (1.0f / 256));  // 8 mantissa bits
  }
}
