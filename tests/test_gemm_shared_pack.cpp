// gemm_xwt and gemm_dyw_acc (kernels/cpu/gemm.h) with the weight packed once for all row chunks
// (kernels/cpu/gemm_shared_pack.h) against the per-chunk Eigen products they replaced, bit for
// bit: the training model's shapes (the quickstart and C256 linears and experts, expert row counts
// from a handful to thousands) and odd ones, at 1 and 2 threads, '=' and '+='.
#include <doctest/doctest.h>

#include <omp.h>

#include <cstring>
#include <iterator>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "test_util.h"

using namespace anyk::cpu;

namespace {

// The former gemm_xwt / gemm_dyw_acc: one Eigen product per row chunk.
void ref_xwt(float* y, const float* x, const float* w, int N, int I, int O, bool acc) {
  eigen_serial();
  CMatMap<float> W(w, O, I);
  for_row_chunks(N, int64_t(I) * O, kGemmGrainFlops, [&](int r0, int r1) {
    MatMap<float> Y(y + int64_t(r0) * O, r1 - r0, O);
    CMatMap<float> X(x + int64_t(r0) * I, r1 - r0, I);
    if (acc)
      Y.noalias() += X * W.transpose();
    else
      Y.noalias() = X * W.transpose();
  });
}
void ref_dyw(float* dx, const float* dy, const float* w, int N, int I, int O) {
  eigen_serial();
  CMatMap<float> W(w, O, I);
  for_row_chunks(N, int64_t(I) * O, kGemmGrainFlops, [&](int r0, int r1) {
    MatMap<float>(dx + int64_t(r0) * I, r1 - r0, I).noalias() +=
        CMatMap<float>(dy + int64_t(r0) * O, r1 - r0, O) * W;
  });
}

std::vector<float> rnd(size_t n, uint64_t seed) {
  auto d = anyk::test::randn(n, seed, 1.0);
  return std::vector<float>(d.begin(), d.end());
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct Shape {
  int N, I, O;
};

}  // namespace

TEST_CASE("shared-pack products equal the per-chunk Eigen products bit for bit") {
  const Shape shapes[] = {
      {2048, 128, 384}, {2048, 128, 128}, {2048, 128, 256},  {512, 128, 256},   {333, 128, 256},
      {97, 256, 128},   {1024, 256, 768}, {4096, 256, 256},  {1024, 256, 512},  {777, 512, 256},
      {64, 128, 256},   {33, 64, 96},     {512, 128, 2048},  {200, 1000, 300},  {48, 700, 5},
      {40, 3, 7},       {35, 17, 1},      {2, 300, 300},     {1, 128, 256},     {1500, 40, 1100}};
  int engaged = 0;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    for (const Shape& s : shapes) {
      CAPTURE(threads);
      CAPTURE(s.N);
      CAPTURE(s.I);
      CAPTURE(s.O);
      const auto x = rnd(size_t(s.N) * s.I, 1 + uint64_t(s.N)), w = rnd(size_t(s.O) * s.I, 2 + uint64_t(s.O));
      const auto dy = rnd(size_t(s.N) * s.O, 3 + uint64_t(s.I)), y0 = rnd(size_t(s.N) * s.O, 4);
      const auto dx0 = rnd(size_t(s.N) * s.I, 5);
      for (bool acc : {false, true}) {
        CAPTURE(acc);
        auto got = y0, want = y0;
        gemm_xwt(got.data(), x.data(), w.data(), s.N, s.I, s.O, acc);
        ref_xwt(want.data(), x.data(), w.data(), s.N, s.I, s.O, acc);
        CHECK(same_bits(got, want));
      }
      auto got = dx0, want = dx0;
      gemm_dyw_acc(got.data(), dy.data(), w.data(), s.N, s.I, s.O);
      ref_dyw(want.data(), dy.data(), w.data(), s.N, s.I, s.O);
      CHECK(same_bits(got, want));
#ifdef ANYK_SHARED_PACK
      auto probe = y0;
      engaged += shared_pack::run_chunked<float, Eigen::RowMajor, Eigen::ColMajor>(
          probe.data(), s.O, w.data(), s.I, x.data(), s.I, s.O, s.N, s.I, true, int64_t(s.I) * s.O, kGemmGrainFlops);
#endif
    }
  }
  omp_set_num_threads(1);
#ifdef ANYK_SHARED_PACK
  // The shared-pack path ran for most shapes (else this suite would compare Eigen with itself).
  MESSAGE("shared-pack path taken for " << engaged << " of " << 2 * std::size(shapes) << " shapes");
  CHECK(engaged >= 20);
#endif
}
