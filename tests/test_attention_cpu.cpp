// The CPU attention forward (kernels/cpu/attention.cpp) against the formulation it replaced, bit
// for bit: the scores were `A = (Q * K.transpose()) * scale` (Eigen evaluates the product into a
// fresh column-major temporary and copies it scaled), now the same product runs into a reused
// buffer and only the causal half is copied. Shapes from the training models and odd ones: T not a
// multiple of the 16-column copy blocks, tiny products (Eigen's coefficient-based path), 1 and 2
// threads, float and double.
#include <doctest/doctest.h>

#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/eigen_maps.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/parallel.h"
#include "test_util.h"

using namespace anyk::cpu;

namespace {

// The former forward: scores as one Eigen expression, then the same softmax and product as now
// (the plain std::exp loop is bit-identical to the kernel's vexp8 path, test_vexp).
template <class T> void ref_forward(T* out, T* att, const T* qkv, int B, int Tn, int C, int NH) {
  const int D = C / NH;
  const T scale = T(1) / std::sqrt(T(D));
  eigen_serial();
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      const T* base = qkv + int64_t(b) * Tn * 3 * C + int64_t(h) * D;
      CSMatMap<T> Q(base, Tn, D, Eigen::OuterStride<>(3 * C));
      CSMatMap<T> K(base + C, Tn, D, Eigen::OuterStride<>(3 * C));
      CSMatMap<T> V(base + 2 * C, Tn, D, Eigen::OuterStride<>(3 * C));
      MatMap<T> A(att + (int64_t(b) * NH + h) * Tn * Tn, Tn, Tn);
      A.noalias() = (Q * K.transpose()) * scale;
      for (int i = 0; i < Tn; ++i) {
        T* a = A.data() + int64_t(i) * Tn;
        T mx = a[0];
        for (int j = 1; j <= i; ++j) mx = a[j] > mx ? a[j] : mx;
        T s = 0;
        for (int j = 0; j <= i; ++j) {
          a[j] = std::exp(a[j] - mx);
          s += a[j];
        }
        T inv = T(1) / s;
        for (int j = 0; j <= i; ++j) a[j] *= inv;
        for (int j = i + 1; j < Tn; ++j) a[j] = 0;
      }
      SMatMap<T> O(out + int64_t(b) * Tn * C + int64_t(h) * D, Tn, D, Eigen::OuterStride<>(C));
      O.noalias() = A * V;
    }
}

template <class T> using Buf = std::vector<T, Eigen::aligned_allocator<T>>;

template <class T> void check_shapes() {
  struct Shape {
    int B, Tn, C, NH;
  };
  const Shape shapes[] = {{2, 128, 128, 4}, {1, 256, 256, 4}, {2, 33, 64, 2}, {1, 17, 16, 2}, {3, 5, 8, 2},
                          {1, 1, 8, 1},     {2, 2, 4, 1},     {1, 100, 96, 3}, {1, 47, 32, 4}, {1, 16, 64, 1}};
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    for (const Shape& s : shapes) {
      CAPTURE(threads);
      CAPTURE(s.B);
      CAPTURE(s.Tn);
      CAPTURE(s.C);
      CAPTURE(s.NH);
      const auto d = anyk::test::randn(size_t(s.B) * s.Tn * 3 * s.C, 7 + uint64_t(s.Tn), 2.0);
      const Buf<T> qkv(d.begin(), d.end());
      const size_t no = size_t(s.B) * s.Tn * s.C, na = size_t(s.B) * s.NH * s.Tn * s.Tn;
      // Different garbage in the two att buffers: the masked half must be written, not inherited.
      // Aligned alike: Eigen's coefficient-based path for tiny products (O = A V at T = 2..5)
      // splits its sums by the address's alignment.
      Buf<T> out(no, T(1)), att(na, T(-3)), rout(no, T(2)), ratt(na, T(5));
      attention_forward(out.data(), att.data(), qkv.data(), s.B, s.Tn, s.C, s.NH);
      ref_forward(rout.data(), ratt.data(), qkv.data(), s.B, s.Tn, s.C, s.NH);
      CHECK(std::memcmp(out.data(), rout.data(), no * sizeof(T)) == 0);
      CHECK(std::memcmp(att.data(), ratt.data(), na * sizeof(T)) == 0);
    }
  }
  omp_set_num_threads(1);
}

}  // namespace

TEST_CASE("attention forward equals the one-expression Eigen formulation bit for bit") {
  check_shapes<float>();
  check_shapes<double>();
}
