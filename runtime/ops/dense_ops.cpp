// The dense ops and their gradient rules: embedding, linear, add, scale, RMSNorm, RoPE,
// attention, SwiGLU, cross-entropy. Forward calls the CPU kernel; backward adds into inputs.
#include "kernels/cpu/kernels.h"
#include "runtime/ops/ops.h"

namespace anyk {

namespace {
Shape with_last(const Shape& s, int64_t last) {
  Shape o = s;
  o.d[o.ndim - 1] = last;
  return o;
}
void same_dtype(const Var& a, const Var& b, const char* op) {
  ANYK_CHECK(a.dtype() == b.dtype(), op << ": dtype mismatch " << dtype_name(a.dtype()) << " vs "
                                        << dtype_name(b.dtype()));
}
}  // namespace

Var embedding(Tape& tape, const int* ids, int N, const Var& wte) {
  int V = int(wte.val.dim(0)), C = int(wte.val.dim(1));
  for (int n = 0; n < N; ++n)
    ANYK_CHECK(ids[n] >= 0 && ids[n] < V, "token id " << ids[n] << " at position " << n
                                                      << " is outside the vocab [0," << V << ")");
  Var out = tape.make({N, C}, wte.dtype(), wte.requires_grad());
  dispatch(wte.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::embedding_forward<T>(out.val.ptr<T>(), ids, wte.val.ptr<T>(), N, C);
  });
  if (out.requires_grad())
    tape.record("embedding", [=] {
      dispatch(wte.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::embedding_backward<T>(wte.grad.ptr<T>(), out.grad.ptr<T>(), ids, N, C);
      });
    });
  return out;
}

Var linear(Tape& tape, const Var& x, const Var& w) {
  same_dtype(x, w, "linear");
  int I = int(x.shape()[-1]), O = int(w.val.dim(0));
  ANYK_CHECK(w.val.dim(1) == I, "linear: x " << x.shape().str() << " does not match w "
                                             << w.val.shape.str());
  int N = int(x.val.numel() / I);
  Var out = tape.make(with_last(x.shape(), O), x.dtype(), any_grad({&x, &w}));
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::linear_forward<T>(out.val.ptr<T>(), x.val.ptr<T>(), w.val.ptr<T>(), N, I, O);
  });
  if (out.requires_grad())
    tape.record("linear", [=] {
      dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::linear_backward<T>(x.requires_grad() ? x.grad.ptr<T>() : nullptr,
                                w.requires_grad() ? w.grad.ptr<T>() : nullptr, out.grad.ptr<T>(),
                                x.val.ptr<T>(), w.val.ptr<T>(), N, I, O);
      });
    });
  return out;
}

Var add(Tape& tape, const Var& a, const Var& b) {
  same_dtype(a, b, "add");
  ANYK_CHECK(a.val.numel() == b.val.numel(),
             "add: shapes " << a.shape().str() << " and " << b.shape().str() << " differ");
  Var out = tape.make(a.shape(), a.dtype(), any_grad({&a, &b}));
  int64_t n = a.val.numel();
  dispatch(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::add_forward<T>(out.val.ptr<T>(), a.val.ptr<T>(), b.val.ptr<T>(), n);
  });
  if (out.requires_grad())
    tape.record("add", [=] {
      dispatch(a.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::add_backward<T>(a.requires_grad() ? a.grad.ptr<T>() : nullptr,
                             b.requires_grad() ? b.grad.ptr<T>() : nullptr, out.grad.ptr<T>(), n);
      });
    });
  return out;
}

Var scale(Tape& tape, const Var& a, double s) {
  Var out = tape.make(a.shape(), a.dtype(), a.requires_grad());
  int64_t n = a.val.numel();
  dispatch(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::scale_forward<T>(out.val.ptr<T>(), a.val.ptr<T>(), T(s), n);
  });
  if (out.requires_grad())
    tape.record("scale", [=] {
      dispatch(a.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::scale_backward<T>(a.grad.ptr<T>(), out.grad.ptr<T>(), T(s), n);
      });
    });
  return out;
}

Var rmsnorm(Tape& tape, const Var& x, const Var& w, double eps) {
  same_dtype(x, w, "rmsnorm");
  int C = int(x.shape()[-1]), N = int(x.val.numel() / C);
  ANYK_CHECK(w.val.numel() == C, "rmsnorm: weight " << w.shape().str() << " vs x " << x.shape().str());
  Var out = tape.make(x.shape(), x.dtype(), any_grad({&x, &w}));
  Tensor rstd = tape.arena().tensor({N}, x.dtype());
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::rmsnorm_forward<T>(out.val.ptr<T>(), rstd.ptr<T>(), x.val.ptr<T>(), w.val.ptr<T>(), N, C, eps);
  });
  if (out.requires_grad())
    tape.record("rmsnorm", [=] {
      dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::rmsnorm_backward<T>(x.requires_grad() ? x.grad.ptr<T>() : nullptr,
                                 w.requires_grad() ? w.grad.ptr<T>() : nullptr, out.grad.ptr<T>(),
                                 x.val.ptr<T>(), w.val.ptr<T>(), rstd.ptr<T>(), N, C);
      });
    });
  return out;
}

Var rope(Tape& tape, const Var& x, int nrot, double theta) {
  ANYK_CHECK(x.shape().ndim == 4, "rope expects (B,T,NHx,D), got " << x.shape().str());
  int B = int(x.shape()[0]), T_ = int(x.shape()[1]), NHx = int(x.shape()[2]), D = int(x.shape()[3]);
  ANYK_CHECK(D % 2 == 0 && nrot <= NHx, "rope: head dim " << D << " must be even, nrot " << nrot
                                                          << " <= heads " << NHx);
  Var out = tape.make(x.shape(), x.dtype(), x.requires_grad());
  // The angle tables are computed once per call (T x D/2), not per element.
  Tensor cs = tape.arena().tensor({2, T_, D / 2}, x.dtype());
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* c = cs.ptr<T>();
    cpu::rope_tables<T>(c, c + int64_t(T_) * (D / 2), T_, D, theta);
    cpu::rope_forward<T>(out.val.ptr<T>(), x.val.ptr<T>(), c, c + int64_t(T_) * (D / 2), B, T_, NHx, D, nrot);
  });
  if (out.requires_grad())
    tape.record("rope", [=] {
      dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* c = cs.ptr<T>();
        cpu::rope_backward<T>(x.grad.ptr<T>(), out.grad.ptr<T>(), c, c + int64_t(T_) * (D / 2), B, T_, NHx, D,
                              nrot);
      });
    });
  return out;
}

Var attention(Tape& tape, const Var& qkv, int NH) {
  ANYK_CHECK(qkv.shape().ndim == 3 && qkv.shape()[2] % 3 == 0,
             "attention expects qkv (B,T,3C), got " << qkv.shape().str());
  int B = int(qkv.shape()[0]), T_ = int(qkv.shape()[1]), C = int(qkv.shape()[2] / 3);
  ANYK_CHECK(C % NH == 0, "attention: dim " << C << " is not divisible by heads " << NH);
  Var out = tape.make({B, T_, C}, qkv.dtype(), qkv.requires_grad());
  Tensor att = tape.arena().tensor({B, NH, T_, T_}, qkv.dtype());
  dispatch(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::attention_forward<T>(out.val.ptr<T>(), att.ptr<T>(), qkv.val.ptr<T>(), B, T_, C, NH);
  });
  if (out.requires_grad()) {
    Arena* arena = &tape.arena();
    tape.record("attention", [=] {
      Tensor scratch = arena->tensor({B, NH, T_, T_}, qkv.dtype());
      dispatch(qkv.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::attention_backward<T>(qkv.grad.ptr<T>(), scratch.ptr<T>(), out.grad.ptr<T>(),
                                   qkv.val.ptr<T>(), att.ptr<T>(), B, T_, C, NH);
      });
    });
  }
  return out;
}

Var swiglu(Tape& tape, const Var& h) {
  int H2 = int(h.shape()[-1]);
  ANYK_CHECK(H2 % 2 == 0, "swiglu expects an even last dim, got " << h.shape().str());
  int H = H2 / 2, M = int(h.val.numel() / H2);
  Var out = tape.make(with_last(h.shape(), H), h.dtype(), h.requires_grad());
  dispatch(h.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::swiglu_forward<T>(out.val.ptr<T>(), h.val.ptr<T>(), M, H);
  });
  if (out.requires_grad())
    tape.record("swiglu", [=] {
      dispatch(h.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::swiglu_backward<T>(h.grad.ptr<T>(), out.grad.ptr<T>(), h.val.ptr<T>(), M, H);
      });
    });
  return out;
}

Var cross_entropy(Tape& tape, const Var& logits, const int* targets, double norm) {
  int V = int(logits.shape()[-1]), N = int(logits.val.numel() / V);
  for (int n = 0; n < N; ++n)
    ANYK_CHECK(targets[n] >= 0 && targets[n] < V,
               "target " << targets[n] << " at position " << n << " is outside the vocab [0," << V << ")");
  if (norm <= 0) norm = N;
  Var out = tape.make({1}, logits.dtype(), logits.requires_grad());
  Tensor losses = tape.arena().tensor({N}, logits.dtype());
  dispatch(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* l = losses.ptr<T>();
    cpu::cross_entropy_forward<T>(l, logits.val.ptr<T>(), targets, N, V);
    double s = 0;
    for (int n = 0; n < N; ++n) s += l[n];
    out.val.ptr<T>()[0] = T(s / norm);
  });
  if (out.requires_grad()) {
    Arena* arena = &tape.arena();
    tape.record("cross_entropy", [=] {
      dispatch(logits.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* dl = arena->alloc_n<T>(N);
        T g = out.grad.ptr<T>()[0] / T(norm);
        for (int n = 0; n < N; ++n) dl[n] = g;
        cpu::cross_entropy_backward<T>(logits.grad.ptr<T>(), dl, logits.val.ptr<T>(), targets, N, V);
      });
    });
  }
  return out;
}

}  // namespace anyk
