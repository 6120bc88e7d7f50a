// A product cut into column chunks (parallel.h's row chunks of a row-major result) with the
// weight operand packed once for all chunks, instead of once per chunk.
//
// Each chunk of gemm_xwt / gemm_dyw_acc used to be its own Eigen product, and each Eigen product
// packs its whole left operand (in Eigen's column-major view: the weight matrix) before it
// starts: at 32..96 result rows per chunk that repacking of W was 7-13% of a training step
// (docs/design.md, "Where training time goes"). The weight gradient gemm_dytx_acc, cut into
// chunks of dW's rows, had the same waste with x, the operand all its chunks share (the left
// operand of dWᵀ = Xᵀ · dY in Eigen's view), and takes the same path (docs/threads.md).
// run_chunked() runs, for every chunk, the same loop as Eigen 3.4's sequential
// general_matrix_matrix_product::run: the same blocking (computed by Eigen's own
// computeProductBlockingSizes for that chunk's shape), the same pack_rhs and the
// same gebp micro-kernel calls on the same packed blocks, in the same order; only the packed
// blocks of the left operand are made once and shared. So every element's sum is Eigen's, bit
// for bit (tests/test_gemm_shared_pack.cpp compares with the per-chunk Eigen products).
// It declines (returns false, and the caller runs the Eigen products) where Eigen would not run
// that loop: a chunk of one column or one row (Eigen's matrix-vector path), a tiny product
// (Eigen's coefficient-based path), or a chunk whose blocking differs from the first chunk's.
// Only Eigen 3.4.x: other versions take the plain path.
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/parallel.h"

#if EIGEN_VERSION_AT_LEAST(3, 4, 0) && !EIGEN_VERSION_AT_LEAST(3, 4, 90)
#define ANYK_SHARED_PACK 1
#endif

namespace anyk::cpu::shared_pack {

#ifdef ANYK_SHARED_PACK
using Index = Eigen::Index;

struct Blocking {
  Index kc, mc, nc;
  bool operator==(const Blocking& o) const { return kc == o.kc && mc == o.mc; }
};

// The blocking Eigen's scaleAndAddTo uses for res (m x n) += lhs (m x k) * rhs (k x n) on one
// thread (gemm_blocking_space with l3 blocking), clamped as general_matrix_matrix_product::run
// clamps it.
template <class T> Blocking blocking(Index m, Index n, Index k) {
  Index kc = k, mc = m, nc = n;
  Eigen::internal::computeProductBlockingSizes<T, T, 1>(kc, mc, nc, Index(1));
  return {kc, std::min(m, mc), std::min(n, nc)};
}

// Grow-only aligned scratch of the calling thread.
template <class T> T* scratch(std::vector<T, Eigen::aligned_allocator<T>>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// res (m x n, column-major, leading dimension ldres) += lhs (m x k) * rhs (k x n), with lhs and
// rhs read through Eigen's data mappers in storage orders LO and RO (leading dimensions ldl,
// ldr); the n columns cut as for_row_chunks(n, ...) cuts rows; with zero_first each chunk's
// columns are set to 0 first (Eigen's `=` product: setZero, then add).
template <class T, int LO, int RO>
bool run_chunked(T* res, Index ldres, const T* lhs, Index ldl, const T* rhs, Index ldr, Index m, Index n,
                 Index k, bool zero_first, int64_t work_per_row, int64_t grain) {
  namespace ei = Eigen::internal;
  using Traits = ei::gebp_traits<T, T>;
  using LhsMapper = ei::const_blas_data_mapper<T, Index, LO>;
  using RhsMapper = ei::const_blas_data_mapper<T, Index, RO>;
  using ResMapper = ei::blas_data_mapper<T, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
  if (n <= 0) return true;
  const int R = row_chunk(int(n));
  const int chunks = std::max(1, int(n) / R);
  const Index last = n - Index(chunks - 1) * R;
  // One chunk gains nothing; one-row/one-column or tiny chunks take other Eigen paths.
  if (chunks < 2 || m < 2 || k < 1 || std::min<Index>(R, last) < 2 || m + std::min<Index>(R, last) + k < 20)
    return false;
  const Blocking b = blocking<T>(m, R, k), bl = blocking<T>(m, last, k);
  if (!(b == bl)) return false;
  // The packed lhs blocks, one per (i2, k2) in Eigen's order, each 64-byte aligned.
  const Index mb = (m + b.mc - 1) / b.mc, kb = (k + b.kc - 1) / b.kc;
  const Index blk = (b.mc * b.kc + 15) / 16 * 16;
  static thread_local std::vector<T, Eigen::aligned_allocator<T>> abuf;
  T* A = scratch(abuf, size_t(mb * kb * blk));
  const bool par = int64_t(n) * work_per_row >= grain;
  if (par) governor_tick();  // as in for_row_chunks
  LhsMapper L(lhs, ldl);
  RhsMapper Rm(rhs, ldr);
  ResMapper Res(res, ldres);
#pragma omp parallel if (par)
  {
#pragma omp for schedule(static)
    for (Index blkid = 0; blkid < mb * kb; ++blkid) {
      const Index i2 = (blkid / kb) * b.mc, k2 = (blkid % kb) * b.kc;
      ei::gemm_pack_lhs<T, Index, LhsMapper, Traits::mr, Traits::LhsProgress, typename Traits::LhsPacket4Packing, LO>
          pack_lhs;
      pack_lhs(A + blkid * blk, L.getSubMapper(i2, k2), std::min(k2 + b.kc, k) - k2, std::min(i2 + b.mc, m) - i2);
    }
#pragma omp for schedule(static)
    for (int c = 0; c < chunks; ++c) {
      const Index j0 = Index(c) * R, cols = c + 1 == chunks ? last : R;
      const Blocking cb = c + 1 == chunks ? bl : b;
      static thread_local std::vector<T, Eigen::aligned_allocator<T>> bbuf;
      T* B = scratch(bbuf, size_t(cb.kc * cb.nc));
      if (zero_first) std::memset(res + j0 * ldres, 0, sizeof(T) * size_t(cols * ldres));
      ei::gemm_pack_rhs<T, Index, RhsMapper, Traits::nr, RO> pack_rhs;
      ei::gebp_kernel<T, T, Index, ResMapper, Traits::mr, Traits::nr, false, false> gebp;
      const bool pack_rhs_once = cb.mc != m && cb.kc == k && cb.nc == cols;
      for (Index i2 = 0; i2 < m; i2 += cb.mc) {
        const Index amc = std::min(i2 + cb.mc, m) - i2;
        for (Index k2 = 0; k2 < k; k2 += cb.kc) {
          const Index akc = std::min(k2 + cb.kc, k) - k2;
          const T* Ablk = A + ((i2 / cb.mc) * kb + k2 / cb.kc) * blk;
          for (Index j2 = 0; j2 < cols; j2 += cb.nc) {
            const Index anc = std::min(j2 + cb.nc, cols) - j2;
            if (!pack_rhs_once || i2 == 0) pack_rhs(B, Rm.getSubMapper(k2, j0 + j2), akc, anc);
            gebp(Res.getSubMapper(i2, j0 + j2), Ablk, B, amc, akc, anc, T(1));
          }
        }
      }
    }
  }
  return true;
}
#endif

}  // namespace anyk::cpu::shared_pack
