// Row-index ops and their gradient rules: the row gather and the weighted scatter-add, duals of
// each other (the dispatchers in parallel/ permute tokens with them).
#include "runtime/ops/kernel_call.h"
#include "runtime/ops/ops.h"
#include "runtime/ops/staging.h"

namespace anyk {

namespace {
// An index argument of a row op: I32, one dim of n, on the device of the rows it indexes.
void check_index(const char* op, const char* arg, const Tensor& t, int64_t n, Device dev) {
  ANYK_CHECK(t.dtype == DType::I32 && t.shape.ndim == 1 && t.numel() == n,
             op << ": " << arg << " must be I32 (" << n << "), got " << dtype_name(t.dtype) << " "
                << t.shape.str());
  ANYK_CHECK(t.device == dev, op << ": " << arg << " is on " << device_name(t.device) << " but the rows are on "
                                 << device_name(dev) << " hint: move it with ids_on() or the copy ops");
}
}  // namespace

Var gather_rows(Tape& tape, const Var& x, const Tensor& rows_t) {
  int C = int(x.shape()[-1]), M = int(rows_t.numel());
  check_index("gather_rows", "rows", rows_t, M, x.val.device);
  const int32_t* rows = rows_t.dev_ptr<int32_t>();
  Var out = tape.make_like(x, {M, C}, x.requires_grad());
  Staging st(tape);
  Tensor xv = st.in(x.val), o = st.out(out.val);  // bf16 rows: widened and rounded back, exactly
  with_kernels(xv, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.gather_rows_forward(ctx, o.dev_ptr<T>(), xv.dev_ptr<T>(), rows, M, C);
  });
  st.commit();
  if (out.requires_grad())
    tape.record("gather_rows", [=] {
      with_kernels(x.grad, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.gather_rows_backward(ctx, x.grad.dev_ptr<T>(), out.grad.dev_ptr<T>(), rows, M, C);
      });
    });
  return out;
}

Var scatter_add_rows(Tape& tape, const Var& y, const Var* w, const Tensor& tok_t, const Tensor& widx_t, int N) {
  int C = int(y.shape()[-1]), M = int(y.val.numel() / C);
  check_index("scatter_add_rows", "tok", tok_t, M, y.val.device);
  check_index("scatter_add_rows", "widx", widx_t, M, y.val.device);
  if (w) ANYK_CHECK(w->val.device == y.val.device, "scatter_add_rows: weights on " << device_name(w->val.device)
                                                       << ", rows on " << device_name(y.val.device));
  const int32_t *tok = tok_t.dev_ptr<int32_t>(), *widx = widx_t.dev_ptr<int32_t>();
  Var wv = w ? *w : Var{};
  bool needs = y.requires_grad() || (w && w->requires_grad());
  Var out = tape.make_like(y, {N, C}, needs);
  Staging st(tape);
  Tensor yv = st.in(y.val), wt = st.in(wv.val), o = st.out(out.val);  // the sums are made in f32
  with_kernels(yv, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.fill(ctx, o.dev_ptr<T>(), T(0), int64_t(N) * C);
    k.scatter_add_rows_forward(ctx, o.dev_ptr<T>(), yv.dev_ptr<T>(), dev_or_null<T>(wt), tok, widx, M, C);
  });
  st.commit();
  if (out.requires_grad()) {
    Tape* tp = &tape;
    tape.record("scatter_add_rows", [=] {
      Staging bs(*tp);
      Tensor yb = bs.in(y.val), wb = bs.in(wv.val);
      with_kernels(yb, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.scatter_add_rows_backward(ctx, dev_or_null<T>(y.grad), dev_or_null<T>(wv.grad), out.grad.dev_ptr<T>(),
                                    yb.dev_ptr<T>(), dev_or_null<T>(wb), tok, widx, M, C);
      });
    });
  }
  return out;
}

}  // namespace anyk
