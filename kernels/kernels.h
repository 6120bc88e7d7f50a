// The backend-neutral kernel interface. Every kernel an op, the optimizer or a communicator
// needs is one function pointer in Kernels<T>; a backend (kernels/cpu, later kernels/cuda) fills
// one table per scalar type and registers it for a device. Ops look the table up once per call
// (kernels<T>(device)) and never include a backend header.
// Conventions: pointers are device memory of the table's device, outputs first, sizes are element
// counts. Every backward ADDS into its gradient outputs (dx += ...); a null gradient pointer
// means "not needed". Kernels never allocate device memory and never read options. Ctx carries
// how to run (CPU threads, a CUDA stream); kernels are asynchronous with respect to the host
// unless they return a value (those are marked "host sync").
// Legend: B batch, T sequence, C model dim, V vocab, NH heads, D head dim, N tokens (B*T),
// E experts, K experts per token, H expert hidden, M routed rows, n a flat element count.
#pragma once
#include <cstdint>

#include "core/types.h"

namespace anyk {

// How a kernel runs: threads (0: the backend's default), an opaque stream (CUDA: cudaStream_t),
// and whether the GEMMs may round their inputs to bf16 (accumulating in f32; CUDA --precision
// bf16; the CPU backend ignores it).
struct Ctx {
  int threads = 0;
  void* stream = nullptr;
  bool gemm_bf16 = false;
};

template <class T> struct Kernels {
  // ---- element-wise and reductions ----
  // out (n) = v
  void (*fill)(const Ctx&, T* out, T v, int64_t n);
  // dst (n) = src (n)
  void (*copy)(const Ctx&, T* dst, const T* src, int64_t n);
  // y (n) += x (n)  (the accumulate of gradients arriving from elsewhere)
  void (*accumulate)(const Ctx&, T* y, const T* x, int64_t n);
  // out (n) = s[0] / T(div) in every element; s (1)
  void (*fill_div)(const Ctx&, T* out, const T* s, double div, int64_t n);
  // out (1) = T((sum of x (n) in double, in index order) / div)
  void (*sum_div)(const Ctx&, T* out, const T* x, int64_t n, double div);
  // acc (1, double) += sum of x^2 over x (n), in double, fixed 65536-element chunks summed in
  // order (the same value for any thread count)
  void (*sumsq_accumulate)(const Ctx&, double* acc, const T* x, int64_t n);
  // Host sync: the first index i with ids[i] outside [0, V), or -1. ids (n)
  int64_t (*first_bad_id)(const Ctx&, const int32_t* ids, int64_t n, int V);

  // ---- dense ops ----
  // out (N,C) = wte (V,C) [ids (N)]
  void (*embedding_forward)(const Ctx&, T* out, const int32_t* ids, const T* wte, int N, int C);
  void (*embedding_backward)(const Ctx&, T* dwte, const T* dout, const int32_t* ids, int N, int C);
  // out (N,O) = x (N,I) · w (O,I)^T
  void (*linear_forward)(const Ctx&, T* out, const T* x, const T* w, int N, int I, int O);
  void (*linear_backward)(const Ctx&, T* dx, T* dw, const T* dout, const T* x, const T* w, int N, int I,
                          int O);
  // out (n) = a + b ; backward da += dout, db += dout
  void (*add_forward)(const Ctx&, T* out, const T* a, const T* b, int64_t n);
  void (*add_backward)(const Ctx&, T* da, T* db, const T* dout, int64_t n);
  // out (n) = s * a (out may be a: in place) ; backward da += s * dout
  void (*scale_forward)(const Ctx&, T* out, const T* a, T s, int64_t n);
  void (*scale_backward)(const Ctx&, T* da, const T* dout, T s, int64_t n);
  // RMSNorm over the last dim. out, x (N,C)  w (C)  rstd (N) saved for backward
  void (*rmsnorm_forward)(const Ctx&, T* out, T* rstd, const T* x, const T* w, int N, int C, double eps);
  void (*rmsnorm_backward)(const Ctx&, T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd,
                           int N, int C);
  // RoPE tables cos, sin (T, D/2) of angle t * theta^(-2i/D); x, out (B,T,NHx,D), heads [0, nrot)
  // rotated, the rest copied. Backward is the inverse rotation (adds into dx).
  void (*rope_tables)(const Ctx&, T* cos, T* sin, int Tn, int D, double theta);
  void (*rope_forward)(const Ctx&, T* out, const T* x, const T* cos, const T* sin, int B, int Tn, int NHx,
                       int D, int nrot);
  void (*rope_backward)(const Ctx&, T* dx, const T* dout, const T* cos, const T* sin, int B, int Tn,
                        int NHx, int D, int nrot);
  // Causal attention. qkv (B,T,3C) = [q | k | v], out (B,T,C), att (B,NH,T,T) saved softmax,
  // scratch (B,NH,T,T) for backward.
  void (*attention_forward)(const Ctx&, T* out, T* att, const T* qkv, int B, int Tn, int C, int NH);
  void (*attention_backward)(const Ctx&, T* dqkv, T* scratch, const T* dout, const T* qkv, const T* att,
                             int B, int Tn, int C, int NH);
  // SwiGLU: h (M,2H) = [gate | up] -> out (M,H) = silu(gate) * up
  void (*swiglu_forward)(const Ctx&, T* out, const T* h, int M, int H);
  void (*swiglu_backward)(const Ctx&, T* dh, const T* dout, const T* h, int M, int H);
  // losses (N) = -log softmax(logits (N,V))[targets (N)] ; dlogits += dlosses[n] (softmax - onehot)
  void (*cross_entropy_forward)(const Ctx&, T* losses, const T* logits, const int32_t* targets, int N, int V);
  void (*cross_entropy_backward)(const Ctx&, T* dlogits, const T* dlosses, const T* logits,
                                 const int32_t* targets, int N, int V);

  // ---- generic row movement and grouped matmul (the MoE permutation uses them) ----
  // out (M,C) = x [rows (M)] ; backward scatter-adds dout into dx (N,C)
  void (*gather_rows_forward)(const Ctx&, T* out, const T* x, const int32_t* rows, int M, int C);
  void (*gather_rows_backward)(const Ctx&, T* dx, const T* dout, const int32_t* rows, int M, int C);
  // out (N,C) += w[widx[m]] * y (M,C) [m] into row tok[m]; w null means weight 1
  void (*scatter_add_rows_forward)(const Ctx&, T* out, const T* y, const T* w, const int32_t* tok,
                                   const int32_t* widx, int M, int C);
  void (*scatter_add_rows_backward)(const Ctx&, T* dy, T* dw, const T* dout, const T* y, const T* w,
                                    const int32_t* tok, const int32_t* widx, int M, int C);
  // Rows offsets[e]..offsets[e+1] of x (M,I) use w[e] (O,I): out (M,O). offsets (E+1) are HOST
  // memory on every backend (the dispatch plan is built on the host; CUDA loops over experts).
  void (*grouped_linear_forward)(const Ctx&, T* out, const T* x, const T* w, const int32_t* offsets, int E,
                                 int I, int O);
  void (*grouped_linear_backward)(const Ctx&, T* dx, T* dw, const T* dout, const T* x, const T* w,
                                  const int32_t* offsets, int E, int I, int O);

  // ---- optimizer ----
  // AdamW on n elements (moments and math in double, stored as T):
  // m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p = p*shrink - step_size * m / (sqrt(v)*inv_sqrt_bc2 + eps)
  void (*adamw_update)(const Ctx&, T* p, T* m, T* v, const T* g, int64_t n, double b1, double b2, double eps,
                       double shrink, double step_size, double inv_sqrt_bc2);

  // ---- router (model/moe_ops) ----
  // logits (N,E) -> probs (N,E) softmax over all E, lse (N), ids (N,K) the top-kt experts by
  // probability (ties: lower id first; -1 in unused slots), weights (N,K) their probabilities
  // (renormalised over the chosen when renorm); kt = kcount[n] when kcount (N) is given, else K.
  void (*router_forward)(const Ctx&, T* probs, T* lse, int32_t* ids, T* weights, const T* logits,
                         const int32_t* kcount, int N, int E, int K, bool renorm);
  // dlogits += the gradient through dweights (N,K), dprobs (N,E) and dlse (N) (both may be null)
  void (*router_backward)(const Ctx&, T* dlogits, const T* dweights, const T* dprobs, const T* dlse,
                          const T* probs, const int32_t* ids, int N, int E, int K, bool renorm);
  // kcount (N): per row of probs (N,E) the smallest k whose k largest sum to >= p, in
  // [k_min, k_max]; NaN counts as zero mass. scratch: E doubles the CPU kernel sorts in
  // (device memory like every pointer here, the step arena; the checked device refuses host memory);
  // the CUDA kernel ignores it.
  void (*top_p_count_forward)(const Ctx&, int32_t* kcount, double* scratch, const T* probs, int N, int E,
                              double p, int k_min, int k_max);
  // EMoE: ids, weights (N,K) = K of each token's pool_ids (N,P) drawn without replacement (keyed by
  // key, token, draw), in pool order; weights from probs (N,E), renormalised when renorm. P <= 64.
  void (*emoe_sample_forward)(const Ctx&, int32_t* ids, T* weights, const T* probs, const int32_t* pool_ids,
                              int N, int E, int K, int P, uint64_t key, bool renorm);
  // counts (E) = occurrences of each expert in ids (n); negative ids skipped (same in every table)
  void (*expert_counts)(const Ctx&, int32_t* counts, const int32_t* ids, int64_t n, int E);
  // Auxiliary losses, each an f64 scalar out (1). lb = E * sum_e f_e P_e (f_e from counts (E), no
  // gradient; P_e the mean of probs (N,E)); z = mean lse (N)^2; kl = mean sum_e q log(q E), q > 0.
  void (*lb_loss_forward)(const Ctx&, double* out, const T* probs, const int32_t* counts, int N, int E);
  // dprobs (N,E) += dout[0] * E * f_e / N  (T is the gradient's type here)
  void (*lb_loss_backward)(const Ctx&, T* dprobs, const double* dout, const int32_t* counts, int N, int E);
  void (*z_loss_forward)(const Ctx&, double* out, const T* lse, int N);
  // dlse (N) += dout[0] * 2 lse / N
  void (*z_loss_backward)(const Ctx&, T* dlse, const double* dout, const T* lse, int N);
  void (*kl_loss_forward)(const Ctx&, double* out, const T* probs, int N, int E);
  // dprobs (N,E) += dout[0] * (log(q E) + 1) / N where q > 0; the gradient in T, or (_f64) in
  // double (the router keeps its probabilities' gradient in f64)
  void (*kl_loss_backward)(const Ctx&, T* dprobs, const double* dout, const T* probs, int N, int E);
  void (*kl_loss_backward_f64)(const Ctx&, double* dprobs, const double* dout, const T* probs, int N, int E);
  // out (1) = T(cl lb + cz z - ck kl) from scalars (1) in T, or (_f64) in double, computed in
  // their type; backward dlb += dout cl, dz += dout cz, dkl -= dout ck (null: not needed)
  void (*router_aux_forward)(const Ctx&, T* out, const T* lb, const T* z, const T* kl, double cl, double cz,
                             double ck);
  void (*router_aux_forward_f64)(const Ctx&, T* out, const double* lb, const double* z, const double* kl,
                                 double cl, double cz, double ck);
  void (*router_aux_backward)(const Ctx&, T* dlb, T* dz, T* dkl, const T* dout, double cl, double cz, double ck);
  void (*router_aux_backward_f64)(const Ctx&, double* dlb, double* dz, double* dkl, const T* dout, double cl,
                                  double cz, double ck);
  // out (n) = T(in (n)) from double (the router's f64 probability gradient)
  void (*convert_from_f64)(const Ctx&, T* out, const double* in, int64_t n);

  // ---- inference (model/generate) ----
  // n new queries q (n,C) (row stride q_stride) of one sequence over its cached keys and values
  // kc, vc (len,C), the new tokens last; out (n,C); scores (NH,n,len) scratch
  void (*attention_cached_forward)(const Ctx&, T* out, T* scores, const T* q, int q_stride, const T* kc,
                                   const T* vc, int n, int len, int C, int NH);
  // out (M,O) = x (M,I) · w (O,I)^T for a few rows (decode steps), streaming w
  void (*linear_rows_forward)(const Ctx&, T* out, const T* x, const T* w, int M, int I, int O);

  // ---- storage conversion (meaningful for T = float; null in other tables) ----
  // out (n) bf16 bits = round-to-nearest-even(x (n)); NaN stays a (quiet) NaN
  void (*to_bf16)(const Ctx&, uint16_t* out, const T* x, int64_t n);
  // out (n) = the bf16 bits x (n) widened exactly
  void (*from_bf16)(const Ctx&, T* out, const uint16_t* x, int64_t n);
};

// Backends register their tables (the CPU one registers itself on first lookup).
void register_kernels(Device d, const Kernels<float>* f32, const Kernels<double>* f64, Ctx ctx = {});
// The table of a device; throws naming the device when no backend registered one.
template <class T> const Kernels<T>& kernels(Device d);
// The execution context registered with the device's tables.
const Ctx& exec_ctx(Device d);

}  // namespace anyk
