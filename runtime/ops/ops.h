// Differentiable ops. Each returns a Var allocated from the tape's arena and records its backward
// closure (which adds into the inputs' gradients). The backward rule of every op sits next to its
// forward in the .cpp beside this header. Ops work in f32 and f64 (the gradient checks use f64),
// on any device with registered kernels (kernels/kernels.h); they never read device data.
#pragma once
#include "runtime/tape.h"

namespace anyk {

// ids (N, i32, on wte's device) -> (N,C) rows of wte (V,C)
Var embedding(Tape& tape, const Tensor& ids, const Var& wte);
// The same from host ids (copied to wte's device when it is not the CPU)
Var embedding(Tape& tape, const int* ids, int N, const Var& wte);
// x (...,I) · w (O,I)^T -> (...,O)
Var linear(Tape& tape, const Var& x, const Var& w);
// a + b (same shape)
Var add(Tape& tape, const Var& a, const Var& b);
// s * a
Var scale(Tape& tape, const Var& a, double s);
// RMSNorm over the last dim: x (...,C), w (C)
Var rmsnorm(Tape& tape, const Var& x, const Var& w, double eps = 1e-5);
// Rotary embedding of the first nrot heads of x (B,T,NHx,D)
Var rope(Tape& tape, const Var& x, int nrot, double theta);
// Causal self-attention: qkv (B,T,3C) -> (B,T,C)
Var attention(Tape& tape, const Var& qkv, int NH);
// SwiGLU: h (M,2H) = [gate | up] -> (M,H)
Var swiglu(Tape& tape, const Var& h);
// Mean (or sum / norm when norm > 0) of -log softmax(logits)[target]: logits (N,V) -> scalar (1)
// targets (N, i32, on the logits' device)
Var cross_entropy(Tape& tape, const Var& logits, const Tensor& targets, double norm = 0);
// The same from host targets (copied to the logits' device when it is not the CPU)
Var cross_entropy(Tape& tape, const Var& logits, const int* targets, double norm = 0);

// Index tensors live where the kernels read them: every I32 index argument below must be on the
// device of the rows it indexes, else the op fails naming the op and the argument.
// Host ids (n) as an I32 tensor on `dev`: a view of the host memory when dev is the CPU, else a
// copy in the tape's arena (one host -> device copy).
Tensor ids_on(Tape& tape, const int* ids, int64_t n, Device dev);

// out (M,C) = x[rows[m]], rows I32 (M); backward scatter-adds. (The permutation's gather half.)
Var gather_rows(Tape& tape, const Var& x, const Tensor& rows);
// out (N,C) = sum over m with tok[m] = n of w[widx[m]] * y[m]; tok, widx I32 (M); w may be null
// (weight 1). (The permutation's scatter half; its dual is gather_rows.)
Var scatter_add_rows(Tape& tape, const Var& y, const Var* w, const Tensor& tok, const Tensor& widx, int N);

}  // namespace anyk
