// Host planning of the experts' GEMMs of grouped_linear on CUDA (kernels/cuda/moe.cu): from the
// row offsets, which experts get a GEMM, its column-major cuBLAS shape and leading dimensions,
// where its operands start, beta, and the side stream it runs on under the `streams` strategy;
// and the row strides of the operands' bf16 copies (--precision bf16), padded so that every
// operand pointer cuBLAS receives is 16-byte aligned. All three strategies (loop, streams,
// grouped) issue exactly these descriptors. Plain C++ (no CUDA headers):
// tests/test_cuda_xgemm_plan.cpp executes them with a naive GEMM on the host, compares with the
// definition and checks the bf16 operands' alignment.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/check.h"

namespace anyk::cuda::xgemm {

// How grouped_linear issues the experts' GEMMs (ANYK_EXPERT_GEMM, cuda::set_expert_gemm):
//   loop     one cuBLAS GEMM per non-empty expert, in order, on the backend's stream;
//   streams  the same GEMMs round-robin over kSideStreams side streams (own cuBLAS handles);
//   grouped  one cublas*GroupedBatched call per GEMM kind, one group per non-empty expert.
enum class Strategy { Loop, Streams, Grouped };
constexpr int kSideStreams = 4;

inline const char* strategy_name(Strategy s) {
  return s == Strategy::Streams ? "streams" : s == Strategy::Grouped ? "grouped" : "loop";
}
inline Strategy parse_strategy(const std::string& name) {
  if (name == "loop") return Strategy::Loop;
  if (name == "streams") return Strategy::Streams;
  if (name == "grouped") return Strategy::Grouped;
  ANYK_FAIL("ANYK_EXPERT_GEMM=" << name << " is not an expert GEMM strategy hint: choose loop, streams or grouped");
}

enum class Kind { Forward, Dx, Dw };

// One column-major cuBLAS GEMM with alpha = 1: C (m,n) = op(A) (m,k) op(B) (k,n) + beta C, where
// op(X) = X^T when the flag is set. A, B, C are the base pointers of the kind (below) advanced by
// a_off, b_off, c_off elements.
struct Gemm {
  int expert;
  bool ta, tb;
  int m, n, k, lda, ldb, ldc;
  int64_t a_off, b_off, c_off;
  int beta;    // 0: C is assigned (forward); 1: C accumulates (backward)
  int stream;  // side stream under `streams`: the expert's position among the non-empty ones % kSideStreams
};

// Checks that offsets (E+1, host memory) split the rows: offsets[0] >= 0, non-decreasing.
inline void check_offsets(const int32_t* offsets, int E) {
  ANYK_CHECK(offsets[0] >= 0, "grouped_linear: offsets[0] = " << offsets[0] << " is negative hint: "
                                                               "offsets must be a non-decreasing split of the rows");
  for (int e = 0; e < E; ++e)
    ANYK_CHECK(offsets[e + 1] >= offsets[e],
               "grouped_linear: offsets[" << e << "] = " << offsets[e] << ", offsets[" << e + 1 << "] = "
                                          << offsets[e + 1] << " decrease hint: offsets must be a non-decreasing "
                                                               "split of the rows");
}

// Row strides (elements) of the GEMMs' A/B operands: x (M,I), dout (M,O) and w (E,O,I), whose
// rows have I, O and I elements. The caller's f32/f64 buffers are dense (natural_layout). The bf16
// copies that moe.cu makes for --precision bf16 pad every row to a multiple of kOperandAlign bytes
// (bf16_layout): then every row, so every expert's block (x_e, dY_e from row offsets[e]; w_e from
// row e*O) and every leading dimension, is 16-byte aligned whatever the split, I and O. Without it
// an expert's block starts at 2 * offsets[e] * I bytes (the dw GEMM's A of split {13, 0, 40, ...},
// I = 33, at byte 858), and a misaligned operand is a sticky CUDA error. The outputs (out, dx,
// dw) are always the caller's dense buffers. The padding elements are never read.
struct Layout {
  int x, d, w;  // row strides of x, dout and w, >= I, O and I
};
constexpr int kOperandAlign = 16;  // bytes
inline int padded_row(int cols, int elem_bytes) {
  const int q = kOperandAlign / elem_bytes;
  return (cols + q - 1) / q * q;
}
inline Layout natural_layout(int I, int O) { return {I, O, I}; }
inline Layout bf16_layout(int I, int O) { return {padded_row(I, 2), padded_row(O, 2), padded_row(I, 2)}; }

// Row-major buffers: x, dx (M,I); out, dout (M,O); w, dw (E,O,I); expert e owns rows
// offsets[e]..offsets[e+1]; A and B are read with the row strides of `ld`, C (out, dx, dw) is
// dense. A row-major matrix is the column-major view of its transpose:
//   Forward  out_e (rows,O) = x_e w_e^T:   out_e^T (O,rows) = op_T(w_e as (I,O)) x_e^T (I,rows)
//            A = w, B = x, C = out, beta 0
//   Dx       dx_e (rows,I) += dY_e w_e:    dx_e^T (I,rows) += (w_e as (I,O)) dY_e^T (O,rows)
//            A = w, B = dout, C = dx, beta 1
//   Dw       dw_e (O,I) += dY_e^T x_e:     dw_e^T (I,O) += (x_e^T as (I,rows)) op_T(dY_e^T as (O,rows))
//            A = x, B = dout, C = dw, beta 1
// Experts with no rows get no GEMM; none at all when E, I or O is not positive (the caller
// zeroes out when I == 0). Every GEMM writes disjoint memory (its own out/dx rows or dw block).
// Fills `out` (cleared first, its capacity reused across calls).
inline void plan(std::vector<Gemm>& out, const int32_t* offsets, int E, int I, int O, Kind kind, Layout ld) {
  out.clear();
  if (E <= 0) return;
  check_offsets(offsets, E);
  if (I <= 0 || O <= 0) return;
  ANYK_CHECK(ld.x >= I && ld.d >= O && ld.w >= I, "grouped_linear: row strides x " << ld.x << ", dout " << ld.d
                                                      << ", w " << ld.w << " below I = " << I << ", O = " << O);
  for (int e = 0; e < E; ++e) {
    const int r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    const int s = int(out.size()) % kSideStreams;
    const int64_t wa = int64_t(e) * O * ld.w;  // w_e as an operand
    const int64_t xa = int64_t(r0) * ld.x, da = int64_t(r0) * ld.d;
    switch (kind) {
      case Kind::Forward:
        out.push_back({e, true, false, O, rows, I, ld.w, ld.x, O, wa, xa, int64_t(r0) * O, 0, s});
        break;
      case Kind::Dx:
        out.push_back({e, false, false, I, rows, O, ld.w, ld.d, I, wa, da, int64_t(r0) * I, 1, s});
        break;
      case Kind::Dw:
        out.push_back({e, false, true, I, O, rows, ld.x, ld.d, I, xa, da, int64_t(e) * O * I, 1, s});
        break;
    }
  }
}
// The caller's dense operands (f32, f64).
inline void plan(std::vector<Gemm>& out, const int32_t* offsets, int E, int I, int O, Kind kind) {
  plan(out, offsets, E, I, O, kind, natural_layout(I, O));
}

}  // namespace anyk::cuda::xgemm
