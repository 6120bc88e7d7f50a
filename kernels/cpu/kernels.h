// CPU kernels: free <op>_forward / <op>_backward functions over raw pointers and int sizes,
// outputs first. Templated on the scalar (float for training, double for the gradient checks).
// Convention: every backward ADDS into its gradient outputs (dx += ..., dw += ...); a null
// gradient pointer means "not needed". Kernels never allocate and never read options; scratch
// memory, where needed, is passed in.
// Legend: B batch, T sequence, C model dim, V vocab, NH heads, D head dim, N tokens (B*T),
// E experts, K experts per token, H expert hidden, M routed rows.
#pragma once
#include <cstdint>

namespace anyk::cpu {

// out (N,C) = wte[ids] ; wte (V,C)
template <class T> void embedding_forward(T* out, const int* ids, const T* wte, int N, int C);
template <class T> void embedding_backward(T* dwte, const T* dout, const int* ids, int N, int C);

// out (N,O) = x (N,I) · w (O,I)^T
template <class T> void linear_forward(T* out, const T* x, const T* w, int N, int I, int O);
template <class T>
void linear_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, int N, int I, int O);

// out (n) = a + b ; and out = s * a
template <class T> void add_forward(T* out, const T* a, const T* b, int64_t n);
template <class T> void add_backward(T* da, T* db, const T* dout, int64_t n);
template <class T> void scale_forward(T* out, const T* a, T s, int64_t n);
template <class T> void scale_backward(T* da, const T* dout, T s, int64_t n);

// Root-mean-square norm over the last dim. out, x: (N,C)  w: (C)  rstd: (N) saved for backward
template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int N, int C, double eps);
template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int N,
                      int C);

// Rotary embedding on x (B,T,NHx,D): heads [0, nrot) are rotated (pairs i, i+D/2, angle
// t * theta^(-2i/D)), the rest copied. cos, sin: (T, D/2) tables of those angles (see
// rope_tables). Backward is the inverse rotation.
template <class T> void rope_tables(T* cos, T* sin, int Tn, int D, double theta);
template <class T>
void rope_forward(T* out, const T* x, const T* cos, const T* sin, int B, int Tn, int NHx, int D, int nrot);
template <class T>
void rope_backward(T* dx, const T* dout, const T* cos, const T* sin, int B, int Tn, int NHx, int D, int nrot);

// Causal multi-head self-attention. qkv (B,T,3C) packed [q | k | v], each C = NH*D.
// out (B,T,C)  att (B,NH,T,T) softmax probabilities, saved.  scratch (B,NH,T,T) for backward.
template <class T> void attention_forward(T* out, T* att, const T* qkv, int B, int Tn, int C, int NH);
template <class T>
void attention_backward(T* dqkv, T* scratch, const T* dout, const T* qkv, const T* att, int B,
                        int Tn, int C, int NH);
// Inference: n new queries of one sequence over its cached keys and values (len tokens, the new
// ones last, so query i sits at position len - n + i and sees keys 0..len-n+i). q: (n, C) rows
// with stride q_stride (e.g. 3C inside packed qkv); kc, vc: (len, C); out: (n, C).
// scores: scratch (NH, n, len). Same arithmetic as attention_forward, row for row.
template <class T>
void attention_cached_forward(T* out, T* scores, const T* q, int q_stride, const T* kc, const T* vc, int n,
                              int len, int C, int NH);
// Inference: out (M,O) = x (M,I) · w (O,I)^T for a few rows M (decode steps), streaming each
// weight row once instead of packing w like a GEMM. Same result as linear_forward up to the
// order of the float sums.
template <class T> void linear_rows_forward(T* out, const T* x, const T* w, int M, int I, int O);

// SwiGLU: h (M,2H) = [gate | up] -> out (M,H) = silu(gate) * up
template <class T> void swiglu_forward(T* out, const T* h, int M, int H);
template <class T> void swiglu_backward(T* dh, const T* dout, const T* h, int M, int H);

// Softmax cross-entropy per row. logits (N,V)  targets (N)  losses (N) = -log softmax[target]
template <class T> void cross_entropy_forward(T* losses, const T* logits, const int* targets, int N, int V);
// dlogits += dlosses[n] * (softmax - onehot)
template <class T>
void cross_entropy_backward(T* dlogits, const T* dlosses, const T* logits, const int* targets, int N,
                            int V);

// Router. logits (N,E) -> probs (N,E) (softmax over all E), lse (N) logsumexp,
// ids (N,K) the top-kt experts by probability (ties: lower id first), -1 in unused slots, and
// weights (N,K): the chosen probabilities, renormalised over the chosen when `renorm`.
// kt = kcount[n] when kcount is given (per-token K, <= K), else K.
template <class T>
void router_forward(T* probs, T* lse, int* ids, T* weights, const T* logits, const int* kcount,
                    int N, int E, int K, bool renorm);
// dlogits += the gradient through weights (dweights (N,K)), through probs (dprobs (N,E), may be
// null), and through lse (dlse (N), may be null).
template <class T>
void router_backward(T* dlogits, const T* dweights, const T* dprobs, const T* dlse, const T* probs,
                     const int* ids, int N, int E, int K, bool renorm);

// Row gather: out (M,C) = x[rows[m]] ; backward scatter-adds into dx (N,C).
template <class T> void gather_rows_forward(T* out, const T* x, const int* rows, int M, int C);
template <class T> void gather_rows_backward(T* dx, const T* dout, const int* rows, int M, int C);

// Weighted scatter-add: out (N,C) += w[widx[m]] * y[m] into row tok[m]; w null means weight 1.
template <class T>
void scatter_add_rows_forward(T* out, const T* y, const T* w, const int* tok, const int* widx, int M,
                              int C);
template <class T>
void scatter_add_rows_backward(T* dy, T* dw, const T* dout, const T* y, const T* w, const int* tok,
                               const int* widx, int M, int C);

// Per-expert matmul over contiguous row blocks: rows offsets[e]..offsets[e+1] of x (M,I) use
// w[e] (O,I): out (M,O). offsets has E+1 entries.
template <class T>
void grouped_linear_forward(T* out, const T* x, const T* w, const int* offsets, int E, int I, int O);
template <class T>
void grouped_linear_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const int* offsets,
                             int E, int I, int O);

// ---- element-wise, reductions, optimizer and conversions (see kernels/kernels.h) ----
template <class T> void fill(T* out, T v, int64_t n);
template <class T> void copy(T* dst, const T* src, int64_t n);
template <class T> void accumulate(T* y, const T* x, int64_t n);
template <class T> void fill_div(T* out, const T* s, double div, int64_t n);
template <class T> void sum_div(T* out, const T* x, int64_t n, double div);
template <class T> void sumsq_accumulate(double* acc, const T* x, int64_t n);
int64_t first_bad_id(const int* ids, int64_t n, int V);
template <class T>
void adamw_update(T* p, T* m, T* v, const T* g, int64_t n, double b1, double b2, double eps, double shrink,
                  double step_size, double inv_sqrt_bc2);
void to_bf16(uint16_t* out, const float* x, int64_t n);
void from_bf16(float* out, const uint16_t* x, int64_t n);

// linear_rows_forward (out (M,O) = x (M,I) w^T) with bf16 weights (uint16_t bits, widened exactly to
// f32): the bits of linear_rows_forward<float> over from_bf16(w) (kernels/cpu/inference.cpp). CPU
// only; the bf16 decode of model/generate.h.
void linear_rows_forward_bf16(float* out, const float* x, const uint16_t* w, int M, int I, int O);

}  // namespace anyk::cpu
