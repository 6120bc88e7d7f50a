// The MoE ops and their gradient rules; see moe_ops.h. Every forward and backward body is a few
// calls into the kernel table of the tensors' device (kernels/kernels.h), each op's calls in one
// with_kernels block.
#include "model/moe_ops.h"

#include <algorithm>
#include <array>
#include <vector>

#include "runtime/device.h"
#include "runtime/ops/kernel_call.h"
#include "runtime/ops/staging.h"

namespace anyk {

[[maybe_unused]] static const bool kModelOpsRegistered = register_ops(kModelOps);

namespace {
void check_top_p(int E, double p, int k_min, int k_max) {
  ANYK_CHECK(E >= 1 && k_min >= 1 && k_min <= k_max && k_max <= E,
             "top_p_count: need 1 <= k_min <= k_max <= E, got k_min = "
                 << k_min << ", k_max = " << k_max << ", E = " << E);
  ANYK_CHECK(p > 0.0 && p <= 1.0, "top_p_count: p = " << p << " is outside (0, 1]");
}
}  // namespace

template <class T>
int top_p_count(const T* probs, int E, double p, int k_min, int k_max) {
  check_top_p(E, p, k_min, k_max);
  // Small E stays on the stack: callers run this once per token.
  constexpr int kStack = 256;
  std::array<double, kStack> stack_buf;
  std::vector<double> heap_buf;
  double* buf = stack_buf.data();
  if (E > kStack) {
    heap_buf.resize(static_cast<size_t>(E));
    buf = heap_buf.data();
  }
  int32_t k = 0;
  kernels<T>(Device::CPU).top_p_count_forward(exec_ctx(Device::CPU), &k, buf, probs, 1, E, p, k_min, k_max);
  return k;
}

template int top_p_count<float>(const float*, int, double, int, int);
template int top_p_count<double>(const double*, int, double, int, int);

Gating router_gating(Tape& tape, const Var& logits, int K, const RouterOptions& opt) {
  ANYK_CHECK(logits.shape().ndim == 2, "router expects logits (N,E), got " << logits.shape().str());
  const int N = int(logits.shape()[0]), E = int(logits.shape()[1]);
  ANYK_CHECK(K >= 1 && K <= E, "router: K = " << K << " must be in [1, E=" << E << "]");
  const bool emoe = opt.pool > K, top_p = !emoe && opt.top_p > 0;
  const int P = emoe ? opt.pool : K, k_min = std::min(opt.k_min, K);
  ANYK_CHECK(!emoe || opt.pool <= E, "router: EMoE pool " << opt.pool << " exceeds E = " << E);
  ANYK_CHECK(!emoe || opt.pool <= 64, "router: EMoE pool " << opt.pool << " is larger than 64");
  if (top_p) check_top_p(E, opt.top_p, k_min, K);
  ANYK_CHECK(!logits.stored_bf16(), "router: the logits are stored in bf16; experts are chosen in f32 "
                                    "(compute the router's linear under Tape::F32Scope)");
  Arena& arena = tape.arena();
  const DType dt = logits.dtype();
  const bool g = logits.requires_grad();
  Gating r;
  r.probs = tape.make({N, E}, dt, false);
  if (g && tape.grad_enabled()) r.probs.grad = arena.tensor({N, E}, DType::F64, true);
  r.lse = tape.make({N}, dt, g);
  r.weights = tape.make({N, K}, dt, g);
  r.ids = arena.tensor({N, K}, DType::I32);
  r.counts = arena.tensor({E}, DType::I32);
  // EMoE ranks the top-P into a pool first; top-p needs the probabilities before choosing.
  Tensor pool_ids = emoe ? arena.tensor({N, P}, DType::I32) : r.ids;
  Tensor pool_w = emoe ? arena.tensor({N, P}, dt) : r.weights.val;
  Tensor kcount = top_p ? arena.tensor({N}, DType::I32) : Tensor{};
  double* scratch = top_p ? arena.alloc_n<double>(size_t(E)) : nullptr;
  int32_t* ids = r.ids.dev_ptr<int32_t>();
  with_kernels(logits.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    T *p = r.probs.val.dev_ptr<T>(), *lse = r.lse.val.dev_ptr<T>(), *w = r.weights.val.dev_ptr<T>();
    const T* z = logits.val.dev_ptr<T>();
    k.router_forward(ctx, p, lse, pool_ids.dev_ptr<int32_t>(), pool_w.dev_ptr<T>(), z, nullptr, N, E, P,
                     opt.renormalize);
    if (emoe)
      k.emoe_sample_forward(ctx, ids, w, p, pool_ids.dev_ptr<int32_t>(), N, E, K, P, opt.sample_key,
                            opt.renormalize);
    if (top_p) {
      int32_t* kc = kcount.dev_ptr<int32_t>();
      k.top_p_count_forward(ctx, kc, scratch, p, N, E, opt.top_p, k_min, K);
      k.router_forward(ctx, p, lse, ids, w, z, kc, N, E, K, opt.renormalize);
    }
    k.expert_counts(ctx, r.counts.dev_ptr<int32_t>(), ids, int64_t(N) * K, E);
  });
  if (r.weights.requires_grad()) {
    Var lg = logits, w = r.weights, probs = r.probs, lse = r.lse;
    const bool renorm = opt.renormalize;
    Arena* ap = &arena;
    tape.record("router", [=] {
      with_kernels(lg.val, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        T* dp = ap->alloc_n<T>(size_t(N) * E);
        k.convert_from_f64(ctx, dp, probs.grad.dev_ptr<double>(), int64_t(N) * E);
        k.router_backward(ctx, lg.grad.dev_ptr<T>(), w.grad.dev_ptr<T>(), dp, lse.grad.dev_ptr<T>(),
                          probs.val.dev_ptr<T>(), ids, N, E, K, renorm);
      });
    });
  }
  return r;
}

Var router_lb_loss(Tape& tape, const Var& probs, const Tensor& counts) {
  ANYK_CHECK(probs.shape().ndim == 2 && counts.dtype == DType::I32 && counts.numel() == probs.shape()[1],
             "router_lb_loss: probs " << probs.shape().str() << " and " << dtype_name(counts.dtype)
                                      << " counts " << counts.shape.str() << " do not match (need I32 (E))");
  const int N = int(probs.shape()[0]), E = int(probs.shape()[1]);
  Var out = tape.make({1}, DType::F64, probs.requires_grad());
  const int32_t* cnt = counts.dev_ptr<int32_t>();
  with_kernels(probs.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.lb_loss_forward(ctx, out.val.dev_ptr<double>(), probs.val.dev_ptr<T>(), cnt, N, E);
  });
  if (out.requires_grad())
    tape.record("router_lb_loss", [=] {
      with_kernels(probs.grad, [&](auto& k, auto& ctx, auto tag) {  // the gradient's dtype
        using G = decltype(tag);
        k.lb_loss_backward(ctx, probs.grad.dev_ptr<G>(), out.grad.dev_ptr<double>(), cnt, N, E);
      });
    });
  return out;
}

Var router_z_loss(Tape& tape, const Var& lse) {
  ANYK_CHECK(lse.shape().ndim == 1, "router_z_loss expects lse (N), got " << lse.shape().str());
  const int N = int(lse.shape()[0]);
  Var out = tape.make({1}, DType::F64, lse.requires_grad());
  with_kernels(lse.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.z_loss_forward(ctx, out.val.dev_ptr<double>(), lse.val.dev_ptr<T>(), N);
  });
  if (out.requires_grad())
    tape.record("router_z_loss", [=] {
      with_kernels(lse.val, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.z_loss_backward(ctx, lse.grad.dev_ptr<T>(), out.grad.dev_ptr<double>(), lse.val.dev_ptr<T>(), N);
      });
    });
  return out;
}

Var router_kl_loss(Tape& tape, const Var& probs) {
  ANYK_CHECK(probs.shape().ndim == 2, "router_kl_loss expects probs (N,E), got " << probs.shape().str());
  const int N = int(probs.shape()[0]), E = int(probs.shape()[1]);
  Var out = tape.make({1}, DType::F64, probs.requires_grad());
  with_kernels(probs.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.kl_loss_forward(ctx, out.val.dev_ptr<double>(), probs.val.dev_ptr<T>(), N, E);
  });
  // The gradient is in the probabilities' dtype or (the router's) f64.
  ANYK_CHECK(!out.requires_grad() || probs.grad.dtype == probs.dtype() || probs.grad.dtype == DType::F64,
             "router_kl_loss: a " << dtype_name(probs.grad.dtype) << " gradient for " << dtype_name(probs.dtype())
                                  << " probs is not supported (need the same dtype or f64)");
  if (out.requires_grad())
    tape.record("router_kl_loss", [=] {
      with_kernels(probs.val, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        const double* dout = out.grad.dev_ptr<double>();
        if (probs.grad.dtype == probs.dtype())
          k.kl_loss_backward(ctx, probs.grad.dev_ptr<T>(), dout, probs.val.dev_ptr<T>(), N, E);
        else
          k.kl_loss_backward_f64(ctx, probs.grad.dev_ptr<double>(), dout, probs.val.dev_ptr<T>(), N, E);
      });
    });
  return out;
}

Var router_aux(Tape& tape, const Var& lb, const Var& z, const Var& kl, const RouterOptions& opt,
               DType dt) {
  ANYK_CHECK(lb.val.numel() == 1 && z.val.numel() == 1 && kl.val.numel() == 1 &&
                 lb.dtype() == z.dtype() && lb.dtype() == kl.dtype(),
             "router_aux expects three scalars of one dtype, got " << lb.shape().str() << " "
                 << dtype_name(lb.dtype()) << ", " << z.shape().str() << " " << dtype_name(z.dtype())
                 << ", " << kl.shape().str() << " " << dtype_name(kl.dtype()));
  ANYK_CHECK(lb.dtype() == dt || lb.dtype() == DType::F64,
             "router_aux: " << dtype_name(lb.dtype()) << " scalars for a " << dtype_name(dt)
                            << " result are not supported (need the result's dtype or f64)");
  const double cl = opt.lb_coef, cz = opt.z_coef, ck = opt.kl_coef;
  const bool same = lb.dtype() == dt;  // else the scalars are f64 (the loss ops' dtype)
  Var out = tape.make({1}, dt, any_grad({&lb, &z, &kl}));
  with_kernels(out.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    if (same)
      k.router_aux_forward(ctx, out.val.dev_ptr<T>(), lb.val.dev_ptr<T>(), z.val.dev_ptr<T>(), kl.val.dev_ptr<T>(),
                           cl, cz, ck);
    else
      k.router_aux_forward_f64(ctx, out.val.dev_ptr<T>(), lb.val.dev_ptr<double>(), z.val.dev_ptr<double>(),
                               kl.val.dev_ptr<double>(), cl, cz, ck);
  });
  if (out.requires_grad())
    tape.record("router_aux", [=] {
      with_kernels(out.val, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        const T* dout = out.grad.dev_ptr<T>();
        if (same) {
          auto g = [](const Var& v) { return v.requires_grad() ? v.grad.dev_ptr<T>() : nullptr; };
          k.router_aux_backward(ctx, g(lb), g(z), g(kl), dout, cl, cz, ck);
        } else {
          auto g = [](const Var& v) { return v.requires_grad() ? v.grad.dev_ptr<double>() : nullptr; };
          k.router_aux_backward_f64(ctx, g(lb), g(z), g(kl), dout, cl, cz, ck);
        }
      });
    });
  return out;
}

namespace {

// Segments (local expert e, source rank s) of grouped_linear's rows, expert-major: each is one
// product of its own, so a row's result and a segment's weight gradient have the bits of the
// same rows on one rank (parallel/grad_tree.h).
struct Segments {
  const int32_t* off = nullptr;  // (E*S + 1)
  int S = 1;                     // sources per expert
  int rows(int e, int s) const { return off[e * S + s + 1] - off[e * S + s]; }
  int start(int e, int s) const { return off[e * S + s]; }
};

template <class T, class K>
void segments_forward(const K& k, const Ctx& ctx, const Segments& sg, T* o, const T* x, const T* w, int E, int I,
                      int O) {
  for (int e = 0; e < E; ++e)
    for (int s = 0; s < sg.S; ++s) {
      const int r0 = sg.start(e, s), n = sg.rows(e, s);
      if (n == 0) continue;
      const int32_t off[2] = {0, n};
      k.grouped_linear_forward(ctx, o + int64_t(r0) * O, x + int64_t(r0) * I, w + int64_t(e) * O * I, off, 1, I, O);
    }
}

// dx per segment; dw of expert e += the pairwise tree over its segments' gradients (a binary
// counter over s: partials of equal size are added, earlier first; an empty segment is a zero
// leaf), so that it equals the micro-batch tree of one rank (parallel/grad_tree.h). The first
// segment adds into dw itself, later ones into zeroed scratch: the bits match one rank when dw
// starts at zero, as the trainer's store does before every micro-batch.
template <class T, class K>
void segments_backward(const K& k, const Ctx& ctx, Device dev, const Segments& sg, T* dx, T* dw, const T* dy,
                       const T* x, const T* w, int E, int I, int O) {
  const int64_t OI = int64_t(O) * I;
  std::vector<DeviceBuffer> bufs;  // scratch for partials 1, 2, ...
  std::vector<int> level;
  for (int e = 0; e < E; ++e) {
    T* dwe = dw ? dw + int64_t(e) * OI : nullptr;
    auto part = [&](size_t i) { return i == 0 ? dwe : static_cast<T*>(bufs[i - 1].data()); };
    size_t top = 0;  // partials on the stack
    level.clear();
    for (int s = 0; s < sg.S; ++s) {
      const int r0 = sg.start(e, s), n = sg.rows(e, s);
      const int32_t off[2] = {0, n};
      if (dx && n > 0)
        k.grouped_linear_backward(ctx, dx + int64_t(r0) * I, nullptr, dy + int64_t(r0) * O, x + int64_t(r0) * I,
                                  w + int64_t(e) * OI, off, 1, I, O);
      if (!dw) continue;
      if (top > 0) {
        if (bufs.size() < top) bufs.emplace_back(dev, size_t(OI) * sizeof(T));
        bufs[top - 1].zero();
      }
      if (n > 0)
        k.grouped_linear_backward(ctx, nullptr, part(top), dy + int64_t(r0) * O, x + int64_t(r0) * I,
                                  w + int64_t(e) * OI, off, 1, I, O);
      int lv = 0;
      while (top > 0 && level.back() == lv) {  // earlier partial + this one, into the earlier
        k.add_forward(ctx, part(top - 1), part(top - 1), part(top), OI);
        --top;
        level.pop_back();
        ++lv;
      }
      level.push_back(lv);
      ++top;
    }
    for (; dw && top > 1; --top)  // a source count that is not a power of two: fold from the right
      k.add_forward(ctx, part(top - 2), part(top - 2), part(top - 1), OI);
  }
}

}  // namespace

Var grouped_linear(Tape& tape, const Var& x, const Var& w, const Tensor& offsets_t, const Tensor& segments_t) {
  ANYK_CHECK(w.shape().ndim == 3, "grouped_linear expects w (E,O,I), got " << w.shape().str());
  int E = int(w.shape()[0]), O = int(w.shape()[1]), I = int(w.shape()[2]);
  ANYK_CHECK(offsets_t.dtype == DType::I32 && offsets_t.numel() == E + 1,
             "grouped_linear: offsets must be I32 (" << E + 1 << "), got " << dtype_name(offsets_t.dtype) << " "
                                                     << offsets_t.shape.str());
  ANYK_CHECK(offsets_t.device == Device::CPU,
             "grouped_linear: offsets are on " << device_name(offsets_t.device)
                                               << " but the kernel table takes them in host memory (kernels/kernels.h)");
  const int32_t* offsets = offsets_t.ptr<int32_t>();
  int M = int(x.val.numel() / I);
  ANYK_CHECK(x.shape()[-1] == I && offsets[0] == 0 && offsets[E] == M,
             "grouped_linear: x " << x.shape().str() << " does not match w " << w.shape().str()
                                  << " and offsets [0.." << offsets[E] << "]");
  Segments sg;
  if (segments_t.defined() && segments_t.numel() > E + 1) {
    ANYK_CHECK(segments_t.dtype == DType::I32 && segments_t.device == Device::CPU && (segments_t.numel() - 1) % E == 0,
               "grouped_linear: segments must be host I32 (E*S + 1), got " << segments_t.shape.str());
    sg.off = segments_t.ptr<int32_t>();
    sg.S = int((segments_t.numel() - 1) / E);
    for (int e = 0; e <= E; ++e)
      ANYK_CHECK(sg.off[e * sg.S] == offsets[e], "grouped_linear: segments do not match the offsets at expert " << e);
  }
  Var out = tape.make_act({M, O}, x.dtype(), any_grad({&x, &w}));
  Staging st(tape);
  Tensor xv = st.in(x.val), o = st.out(out.val);
  with_kernels(xv, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    if (sg.off)
      segments_forward<T>(k, ctx, sg, o.dev_ptr<T>(), xv.dev_ptr<T>(), w.val.dev_ptr<T>(), E, I, O);
    else
      k.grouped_linear_forward(ctx, o.dev_ptr<T>(), xv.dev_ptr<T>(), w.val.dev_ptr<T>(), offsets, E, I, O);
  });
  st.commit();
  if (out.requires_grad()) {
    Tape* tp = &tape;
    tape.record("grouped_linear", [=] {
      Staging bs(*tp);
      Tensor xb = bs.in(x.val);
      with_kernels(xb, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        if (sg.off)
          segments_backward<T>(k, ctx, xb.device, sg, dev_or_null<T>(x.grad), dev_or_null<T>(w.grad),
                               out.grad.dev_ptr<T>(), xb.dev_ptr<T>(), w.val.dev_ptr<T>(), E, I, O);
        else
          k.grouped_linear_backward(ctx, dev_or_null<T>(x.grad), dev_or_null<T>(w.grad), out.grad.dev_ptr<T>(),
                                    xb.dev_ptr<T>(), w.val.dev_ptr<T>(), offsets, E, I, O);
      });
    });
  }
  return out;
}

}  // namespace anyk
