// How the CPU kernels split work over threads, so that results never depend on the thread count
// and small ops stay on the calling thread.
//
// Determinism: a kernel's work is cut into chunks whose boundaries depend only on the problem's
// sizes; each chunk is computed by one thread in a fixed order, and partial results (where there
// are any) are combined in chunk order. Eigen's own GEMM threading is switched off (its depth
// blocking follows the thread count, so its sums would too): products are cut into row chunks
// here, each chunk a single-threaded Eigen product. Cutting the rows of a row-major product (the
// columns of Eigen's column-major kernel) at multiples of 16 leaves every element's sum as it was,
// bit for bit (tests/test_threads.cpp checks that against one unchunked product).
//
// Grain: a region opens only when its work is worth a fork/join (see docs/threads.md for how the
// thresholds were measured).
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <cstdint>

#include "kernels/cpu/thread_governor.h"

namespace anyk::cpu {

// Below these, a kernel runs on the calling thread. A parallel region costs about 7 us of
// fork/join with passive waiting (measured: a 1024-element RMSNorm took 1.2 us on 1 thread and
// 7.7 us on 2), so a region opens only where the 1-thread time is several times that: about
// 40 us of products (2^21 multiply-adds), 25 us of row-wise work (2^15 elements of a norm,
// softmax or gather), 35 us of element-wise work (2^17 elements). docs/threads.md has the
// measurement.
constexpr int64_t kGemmGrainFlops = int64_t(1) << 21;  // multiply-adds of one product
constexpr int64_t kElementGrain = int64_t(1) << 17;    // elements of an element-wise op
constexpr int64_t kRowGrain = int64_t(1) << 15;        // elements of a row-wise op (norm, softmax)
// The few-row products of decode steps (linear_rows_forward) while regions are cheap (spinning
// threads, regions_cheap() in thread_governor.h: about 0.8 us per region): 2^16 multiply-adds
// read 256 KB of f32 weights, about 13 us from memory. A single prompt's projections and experts
// then split over the threads; with sleeping threads they keep kGemmGrainFlops (measured on 1000-
// token decodes: 2 threads 1.25-1.63x faster than 1 with spinning; the small grain with sleeping
// threads was 5x slower, docs/threads.md).
constexpr int64_t kFewRowsSpinGrainFlops = int64_t(1) << 16;

// Eigen runs single-threaded (once per process, thread-safe).
inline void eigen_serial() {
  static const bool once = (Eigen::setNbThreads(1), true);
  (void)once;
}

// Rows per chunk of a product with `rows` output rows: a multiple of 16, about rows / 24 (24 chunks
// divide evenly over 2, 3, 4, 6 or 8 threads), at least 32. A function of rows only.
inline int row_chunk(int rows) {
  const int per = (rows + 23) / 24;
  return std::max(32, (per + 15) / 16 * 16);
}

// Calls f(r0, r1) for the row chunks of [0, rows) (the last chunk takes the remainder, so no
// chunk is shorter than row_chunk(rows) unless rows is), in parallel when rows * work_per_row
// reaches `grain`.
template <class F> void for_row_chunks(int rows, int64_t work_per_row, int64_t grain, F&& f) {
  if (rows <= 0) return;
  const int R = row_chunk(rows);
  const int chunks = std::max(1, rows / R);
  const bool par = chunks > 1 && int64_t(rows) * work_per_row >= grain;
  if (par) governor_tick();  // a short command sees a busy core within its first layer
#pragma omp parallel for schedule(static) if (par)
  for (int c = 0; c < chunks; ++c) f(c * R, c + 1 == chunks ? rows : (c + 1) * R);
}

}  // namespace anyk::cpu
