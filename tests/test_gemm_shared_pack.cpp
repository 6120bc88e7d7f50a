// gemm_xwt and gemm_dyw_acc (kernels/cpu/gemm.h) with the weight packed once for all row chunks,
// and gemm_dytx_acc with x packed once (kernels/cpu/gemm_shared_pack.h), against the per-chunk
// Eigen products they replaced, bit for bit: the training model's shapes (the quickstart and C256 linears and experts, expert row counts
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

// The former gemm_dytx_acc: one Eigen product per chunk of dw's rows, each over all N.
void ref_dytx(float* dw, const float* dy, const float* x, int N, int I, int O) {
  eigen_serial();
  CMatMap<float> X(x, N, I);
  for_row_chunks(O, int64_t(N) * I, kGemmGrainFlops, [&](int o0, int o1) {
    CSMatMap<float> dY(dy + o0, N, o1 - o0, Eigen::OuterStride<>(O));
    MatMap<float>(dw + int64_t(o0) * I, o1 - o0, I).noalias() += dY.transpose() * X;
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

TEST_CASE("shared-pack weight gradient equals the per-chunk Eigen products bit for bit") {
  // A grid of N (rows summed over: tokens, or an expert's routed rows), I and O, with remainders
  // against the 16-row chunk multiple, tiny and one-wide sizes (where the Eigen fallback must
  // take over), and a few large shapes whose depth and row blockings split into several blocks.
  std::vector<Shape> shapes;
  for (int N : {1, 2, 3, 7, 16, 19, 33, 100, 257, 1000, 2048})
    for (int I : {1, 2, 5, 17, 64, 128, 300})
      for (int O : {1, 3, 31, 32, 48, 65, 128, 384, 777})
        if (int64_t(N) * I * O <= (int64_t(1) << 25)) shapes.push_back({N, I, O});
  for (Shape s : {Shape{4096, 256, 256}, Shape{4096, 256, 768}, Shape{2048, 1024, 512}, Shape{3000, 700, 97},
                  Shape{5000, 64, 2048}, Shape{96, 2000, 130}})
    shapes.push_back(s);
  int engaged = 0, total = 0;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    for (const Shape& s : shapes) {
      CAPTURE(threads);
      CAPTURE(s.N);
      CAPTURE(s.I);
      CAPTURE(s.O);
      const auto x = rnd(size_t(s.N) * s.I, 11 + uint64_t(s.N)), dy = rnd(size_t(s.N) * s.O, 12 + uint64_t(s.O));
      const auto dw0 = rnd(size_t(s.O) * s.I, 13 + uint64_t(s.I));
      auto got = dw0, want = dw0;
      gemm_dytx_acc(got.data(), dy.data(), x.data(), s.N, s.I, s.O);
      ref_dytx(want.data(), dy.data(), x.data(), s.N, s.I, s.O);
      CHECK(same_bits(got, want));
      ++total;
#ifdef ANYK_SHARED_PACK
      auto probe = dw0;
      engaged += shared_pack::run_chunked<float, Eigen::ColMajor, Eigen::RowMajor>(
          probe.data(), s.I, x.data(), s.I, dy.data(), s.O, s.I, s.O, s.N, false, int64_t(s.N) * s.I, kGemmGrainFlops);
#endif
    }
  }
  omp_set_num_threads(1);
#ifdef ANYK_SHARED_PACK
  MESSAGE("shared-pack weight gradient taken for " << engaged << " of " << total << " shapes");
  CHECK(engaged >= total / 4);
#endif
}
