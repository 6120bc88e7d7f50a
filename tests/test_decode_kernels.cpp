// The few-rows matmul of decode steps (linear_rows_forward, kernels/cpu/inference.cpp): against a
// naive loop in double, and each output's bits independent of the other rows in the call (how many
// input rows, which of them, how many weight rows), which batched decode relies on to give every
// sequence the tokens it gets alone.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "test_util.h"

using namespace anyk;

namespace {

const Ctx kCtx{};

template <class T> std::vector<T> rand_vec(size_t n, uint64_t seed) { return test::randn_as<T>(n, seed); }

template <class T> void check_against_naive(double tol) {
  const auto& k = kernels<T>(Device::CPU);
  for (int I : {1, 7, 8, 37, 256, 259, 1024})
    for (int O : {1, 3, 4, 6, 17})
      for (int M : {1, 2, 3, 5, 6, 7, 8, 11}) {
        CAPTURE(I);
        CAPTURE(O);
        CAPTURE(M);
        auto x = rand_vec<T>(size_t(M) * I, 11 + uint64_t(I));
        auto w = rand_vec<T>(size_t(O) * I, 23 + uint64_t(O));
        std::vector<T> out(size_t(M) * O, T(-99));
        k.linear_rows_forward(kCtx, out.data(), x.data(), w.data(), M, I, O);
        double worst = 0;
        for (int m = 0; m < M; ++m)
          for (int o = 0; o < O; ++o) {
            double ref = 0, mag = 0;
            for (int i = 0; i < I; ++i) {
              ref += double(x[size_t(m) * I + i]) * double(w[size_t(o) * I + i]);
              mag += std::fabs(double(x[size_t(m) * I + i]) * double(w[size_t(o) * I + i]));
            }
            worst = std::max(worst, std::fabs(double(out[size_t(m) * O + o]) - ref) / (mag + 1e-30));
          }
        CHECK(worst < tol);
      }
}

template <class T> bool same_bits(const T* a, const T* b, size_t n) { return std::memcmp(a, b, n * sizeof(T)) == 0; }

template <class T> void check_row_independence() {
  const auto& k = kernels<T>(Device::CPU);
  // I = 256 and 1024 (f32 rows of 1 and 4 KiB) take the copy of 5 or more input rows 64 bytes apart.
  for (int I : {37, 256, 1024}) {
    const int M = 12, O = 11;
    auto x = rand_vec<T>(size_t(M) * I, 5);
    auto w = rand_vec<T>(size_t(O) * I, 6);
    std::vector<T> all(size_t(M) * O);
    k.linear_rows_forward(kCtx, all.data(), x.data(), w.data(), M, I, O);
    // One input row alone, from each position (first, middle of a pair, the odd last one).
    for (int m = 0; m < M; ++m) {
      std::vector<T> one(static_cast<size_t>(O), T(0));
      k.linear_rows_forward(kCtx, one.data(), x.data() + size_t(m) * I, w.data(), 1, I, O);
      CHECK(same_bits(one.data(), all.data() + size_t(m) * O, size_t(O)));
    }
    // Rows 3..6 as a batch of 4 (other partners in each pair).
    std::vector<T> four(size_t(4) * O);
    k.linear_rows_forward(kCtx, four.data(), x.data() + size_t(3) * I, w.data(), 4, I, O);
    CHECK(same_bits(four.data(), all.data() + size_t(3) * O, size_t(4) * O));
    // Every batch size 1..M, as the first and as the last rows (1-3 rows and 4 or more are blocked
    // differently: 4 weight rows by up to 3 input rows, 3 weight rows by 4 input rows, the last 5-7
    // rows as 4 + 1, 3 + 3 or 4 + 3; from 5 rows, rows of a multiple of 1 KiB are copied apart).
    for (int mb = 1; mb <= M; ++mb)
      for (int m0 : {0, M - mb}) {
        std::vector<T> part(size_t(mb) * O);
        k.linear_rows_forward(kCtx, part.data(), x.data() + size_t(m0) * I, w.data(), mb, I, O);
        CHECK(same_bits(part.data(), all.data() + size_t(m0) * O, size_t(mb) * O));
      }
    // Weight rows 9..10 alone (a partial block) against the same rows inside the full 11.
    std::vector<T> tail(size_t(M) * 2);
    k.linear_rows_forward(kCtx, tail.data(), x.data(), w.data() + size_t(9) * I, M, I, 2);
    for (int m = 0; m < M; ++m) {
      CHECK(same_bits(tail.data() + size_t(m) * 2, all.data() + size_t(m) * O + 9, 2));
    }
  }
}

}  // namespace

TEST_CASE("linear_rows_forward matches a naive loop in double (f32 to 1e-5, f64 to 1e-13 relative)") {
  check_against_naive<float>(1e-5);
  check_against_naive<double>(1e-13);
}

TEST_CASE("linear_rows_forward: an output's bits do not depend on the other rows of the call") {
  check_row_independence<float>();
  check_row_independence<double>();
}
