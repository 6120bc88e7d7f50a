// The dense ops and their gradient rules: embedding, linear, add, scale, RMSNorm, RoPE,
// attention, SwiGLU, cross-entropy. Forward and backward only call kernels of the tensors'
// device (runtime/ops/kernel_call.h); backward adds into inputs.
#include "runtime/device.h"
#include "runtime/ops/kernel_call.h"
#include "runtime/ops/ops.h"
#include "runtime/ops/staging.h"

namespace anyk {

Tensor ids_on(Tape& tape, const int* ids, int64_t n, Device dev) {
  Tensor t;
  t.shape = Shape{n};
  t.dtype = DType::I32;
  t.data = const_cast<int*>(ids);
  if (dev == Device::CPU) return t;
  Tensor d = tape.arena().tensor({n}, DType::I32);
  ANYK_CHECK(d.device == dev, "ids for device " << device_name(dev) << " but the arena is on "
                                                << device_name(d.device));
  from_host(d, ids);
  return d;
}

namespace {
Shape with_last(const Shape& s, int64_t last) {
  Shape o = s;
  o.d[o.ndim - 1] = last;
  return o;
}
void same_dtype(const Var& a, const Var& b, const char* op) {
  ANYK_CHECK(a.dtype() == b.dtype(), op << ": dtype mismatch " << dtype_name(a.dtype()) << " vs "
                                        << dtype_name(b.dtype()));
  ANYK_CHECK(a.val.device == b.val.device, op << ": device mismatch " << device_name(a.val.device) << " vs "
                                              << device_name(b.val.device));
}
// Every id in [0, V), else an error naming the first bad one (a host sync).
void check_ids(const Tensor& ids, int V, const char* what) {
  ANYK_CHECK(ids.dtype == DType::I32, what << " ids must be i32, got " << dtype_name(ids.dtype));
  int64_t bad = kernels<float>(ids.device).first_bad_id(exec_ctx(ids.device), ids.dev_ptr<int32_t>(),
                                                        ids.numel(), V);
  ANYK_CHECK(bad < 0, what << " " << read_element<int32_t>(ids, bad) << " at position " << bad
                           << " is outside the vocab [0," << V << ")");
}
}  // namespace

Var embedding(Tape& tape, const int* ids, int N, const Var& wte) {
  return embedding(tape, ids_on(tape, ids, N, wte.val.device), wte);
}

Var embedding(Tape& tape, const Tensor& ids, const Var& wte) {
  int V = int(wte.val.dim(0)), C = int(wte.val.dim(1)), N = int(ids.numel());
  ANYK_CHECK(ids.device == wte.val.device, "embedding: ids on " << device_name(ids.device) << ", table on "
                                                                << device_name(wte.val.device));
  check_ids(ids, V, "token id");
  Var out = tape.make_act({N, C}, wte.dtype(), wte.requires_grad());
  Staging st(tape);
  Tensor o = st.out(out.val);
  with_kernels(wte.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.embedding_forward(ctx, o.dev_ptr<T>(), ids.dev_ptr<int32_t>(), wte.val.dev_ptr<T>(), N, C);
  });
  st.commit();
  if (out.requires_grad())
    tape.record("embedding", [=] {
      with_kernels(wte.val, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.embedding_backward(ctx, wte.grad.dev_ptr<T>(), out.grad.dev_ptr<T>(), ids.dev_ptr<int32_t>(), N, C);
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
  Var out = tape.make_act(with_last(x.shape(), O), x.dtype(), any_grad({&x, &w}));
  Staging st(tape);
  Tensor xv = st.in(x.val), o = st.out(out.val);
  with_kernels(xv, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.linear_forward(ctx, o.dev_ptr<T>(), xv.dev_ptr<T>(), w.val.dev_ptr<T>(), N, I, O);
  });
  st.commit();
  if (out.requires_grad()) {
    Tape* tp = &tape;
    tape.record("linear", [=] {
      Staging bs(*tp);
      Tensor xb = bs.in(x.val);
      with_kernels(xb, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.linear_backward(ctx, dev_or_null<T>(x.grad), dev_or_null<T>(w.grad), out.grad.dev_ptr<T>(),
                          xb.dev_ptr<T>(), w.val.dev_ptr<T>(), N, I, O);
      });
    });
  }
  return out;
}

Var add(Tape& tape, const Var& a, const Var& b) {
  same_dtype(a, b, "add");
  ANYK_CHECK(a.val.numel() == b.val.numel(),
             "add: shapes " << a.shape().str() << " and " << b.shape().str() << " differ");
  Var out = tape.make_like(a.stored_bf16() ? a : b, a.shape(), any_grad({&a, &b}));
  int64_t n = a.val.numel();
  Staging st(tape);
  Tensor av = st.in(a.val), bv = st.in(b.val), o = st.out(out.val);
  with_kernels(av, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.add_forward(ctx, o.dev_ptr<T>(), av.dev_ptr<T>(), bv.dev_ptr<T>(), n);
  });
  st.commit();
  if (out.requires_grad())
    tape.record("add", [=] {
      with_kernels(out.grad, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.add_backward(ctx, dev_or_null<T>(a.grad), dev_or_null<T>(b.grad), out.grad.dev_ptr<T>(), n);
      });
    });
  return out;
}

Var scale(Tape& tape, const Var& a, double s) {
  Var out = tape.make_like(a, a.shape(), a.requires_grad());
  int64_t n = a.val.numel();
  Staging st(tape);
  Tensor av = st.in(a.val), o = st.out(out.val);
  with_kernels(av, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.scale_forward(ctx, o.dev_ptr<T>(), av.dev_ptr<T>(), T(s), n);
  });
  st.commit();
  if (out.requires_grad())
    tape.record("scale", [=] {
      with_kernels(a.grad, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.scale_backward(ctx, a.grad.dev_ptr<T>(), out.grad.dev_ptr<T>(), T(s), n);
      });
    });
  return out;
}

Var rmsnorm(Tape& tape, const Var& x, const Var& w, double eps) {
  same_dtype(x, w, "rmsnorm");
  int C = int(x.shape()[-1]), N = int(x.val.numel() / C);
  ANYK_CHECK(w.val.numel() == C, "rmsnorm: weight " << w.shape().str() << " vs x " << x.shape().str());
  Var out = tape.make_act(x.shape(), x.dtype(), any_grad({&x, &w}));
  Tensor rstd = tape.arena().tensor({N}, x.dtype());  // norm statistics stay in the compute dtype
  Staging st(tape);
  Tensor xv = st.in(x.val), o = st.out(out.val);
  with_kernels(xv, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.rmsnorm_forward(ctx, o.dev_ptr<T>(), rstd.dev_ptr<T>(), xv.dev_ptr<T>(), w.val.dev_ptr<T>(), N, C, eps);
  });
  st.commit();
  if (out.requires_grad()) {
    Tape* tp = &tape;
    tape.record("rmsnorm", [=] {
      Staging bs(*tp);
      Tensor xb = bs.in(x.val);
      with_kernels(xb, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.rmsnorm_backward(ctx, dev_or_null<T>(x.grad), dev_or_null<T>(w.grad), out.grad.dev_ptr<T>(),
                           xb.dev_ptr<T>(), w.val.dev_ptr<T>(), rstd.dev_ptr<T>(), N, C);
      });
    });
  }
  return out;
}

Var rope(Tape& tape, const Var& x, int nrot, double theta) {
  ANYK_CHECK(x.shape().ndim == 4, "rope expects (B,T,NHx,D), got " << x.shape().str());
  int B = int(x.shape()[0]), T_ = int(x.shape()[1]), NHx = int(x.shape()[2]), D = int(x.shape()[3]);
  ANYK_CHECK(D % 2 == 0 && nrot <= NHx, "rope: head dim " << D << " must be even, nrot " << nrot
                                                          << " <= heads " << NHx);
  Var out = tape.make_act(x.shape(), x.dtype(), x.requires_grad());
  // The angle tables are computed once per call (T x D/2), not per element.
  Tensor cs = tape.arena().tensor({2, T_, D / 2}, x.dtype());
  const int64_t half = int64_t(T_) * (D / 2);
  Staging st(tape);
  Tensor xv = st.in(x.val), o = st.out(out.val);
  with_kernels(xv, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    T* c = cs.dev_ptr<T>();
    k.rope_tables(ctx, c, c + half, T_, D, theta);
    k.rope_forward(ctx, o.dev_ptr<T>(), xv.dev_ptr<T>(), c, c + half, B, T_, NHx, D, nrot);
  });
  st.commit();
  if (out.requires_grad())
    tape.record("rope", [=] {
      with_kernels(x.grad, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        const T* c = cs.dev_ptr<T>();
        k.rope_backward(ctx, x.grad.dev_ptr<T>(), out.grad.dev_ptr<T>(), c, c + half, B, T_, NHx, D, nrot);
      });
    });
  return out;
}

Var attention(Tape& tape, const Var& qkv, int NH) {
  ANYK_CHECK(qkv.shape().ndim == 3 && qkv.shape()[2] % 3 == 0,
             "attention expects qkv (B,T,3C), got " << qkv.shape().str());
  int B = int(qkv.shape()[0]), T_ = int(qkv.shape()[1]), C = int(qkv.shape()[2] / 3);
  ANYK_CHECK(C % NH == 0, "attention: dim " << C << " is not divisible by heads " << NH);
  Var out = tape.make_act({B, T_, C}, qkv.dtype(), qkv.requires_grad());
  // The saved probabilities stay in the compute dtype (f32 softmax, also for its backward).
  Tensor att = tape.arena().tensor({B, NH, T_, T_}, qkv.dtype());
  Staging st(tape);
  Tensor qv = st.in(qkv.val), o = st.out(out.val);
  with_kernels(qv, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.attention_forward(ctx, o.dev_ptr<T>(), att.dev_ptr<T>(), qv.dev_ptr<T>(), B, T_, C, NH);
  });
  st.commit();
  if (out.requires_grad()) {
    Tape* tp = &tape;
    tape.record("attention", [=] {
      Staging bs(*tp);
      Tensor scratch = bs.temp({B, NH, T_, T_}, qkv.dtype());  // given back after this layer
      Tensor qb = bs.in(qkv.val);
      with_kernels(qb, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.attention_backward(ctx, qkv.grad.dev_ptr<T>(), scratch.dev_ptr<T>(), out.grad.dev_ptr<T>(),
                             qb.dev_ptr<T>(), att.dev_ptr<T>(), B, T_, C, NH);
      });
    });
  }
  return out;
}

Var swiglu(Tape& tape, const Var& h) {
  int H2 = int(h.shape()[-1]);
  ANYK_CHECK(H2 % 2 == 0, "swiglu expects an even last dim, got " << h.shape().str());
  int H = H2 / 2, M = int(h.val.numel() / H2);
  Var out = tape.make_act(with_last(h.shape(), H), h.dtype(), h.requires_grad());
  Staging st(tape);
  Tensor hv = st.in(h.val), o = st.out(out.val);
  with_kernels(hv, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.swiglu_forward(ctx, o.dev_ptr<T>(), hv.dev_ptr<T>(), M, H);
  });
  st.commit();
  if (out.requires_grad()) {
    Tape* tp = &tape;
    tape.record("swiglu", [=] {
      Staging bs(*tp);
      Tensor hb = bs.in(h.val);
      with_kernels(hb, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.swiglu_backward(ctx, h.grad.dev_ptr<T>(), out.grad.dev_ptr<T>(), hb.dev_ptr<T>(), M, H);
      });
    });
  }
  return out;
}

Var cross_entropy(Tape& tape, const Var& logits, const int* targets, double norm) {
  int V = int(logits.shape()[-1]), N = int(logits.val.numel() / V);
  return cross_entropy(tape, logits, ids_on(tape, targets, N, logits.val.device), norm);
}

Var cross_entropy(Tape& tape, const Var& logits, const Tensor& targets, double norm) {
  int V = int(logits.shape()[-1]), N = int(logits.val.numel() / V);
  ANYK_CHECK(targets.numel() == N, "cross_entropy: " << targets.numel() << " targets for " << N << " rows");
  ANYK_CHECK(targets.device == logits.val.device, "cross_entropy: targets on " << device_name(targets.device)
                                                      << ", logits on " << device_name(logits.val.device));
  check_ids(targets, V, "target");
  if (norm <= 0) norm = N;
  Var out = tape.make({1}, logits.dtype(), logits.requires_grad());
  Tensor losses = tape.arena().tensor({N}, logits.dtype());
  Staging st(tape);
  Tensor lv = st.in(logits.val);
  with_kernels(lv, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.cross_entropy_forward(ctx, losses.dev_ptr<T>(), lv.dev_ptr<T>(), targets.dev_ptr<int32_t>(), N, V);
    k.sum_div(ctx, out.val.dev_ptr<T>(), losses.dev_ptr<T>(), N, norm);
  });
  if (out.requires_grad()) {
    Arena* arena = &tape.arena();
    Tape* tp = &tape;
    tape.record("cross_entropy", [=] {
      Tensor dl = arena->tensor({N}, logits.dtype());
      Staging bs(*tp);
      Tensor lb = bs.in(logits.val);
      with_kernels(lb, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.fill_div(ctx, dl.dev_ptr<T>(), out.grad.dev_ptr<T>(), norm, N);
        k.cross_entropy_backward(ctx, logits.grad.dev_ptr<T>(), dl.dev_ptr<T>(), lb.dev_ptr<T>(),
                                 targets.dev_ptr<int32_t>(), N, V);
      });
    });
  }
  return out;
}

}  // namespace anyk
