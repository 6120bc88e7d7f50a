// Row-index ops and their gradient rules: the row gather and the weighted scatter-add, duals of
// each other (the dispatchers in parallel/ permute tokens with them).
#include "runtime/ops/kernel_call.h"
#include "runtime/ops/ops.h"

namespace anyk {

Var gather_rows(Tape& tape, const Var& x, const int* rows, int M) {
  int C = int(x.shape()[-1]);
  Var out = tape.make({M, C}, x.dtype(), x.requires_grad());
  with_kernels(x.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.gather_rows_forward(ctx, out.val.dev_ptr<T>(), x.val.dev_ptr<T>(), rows, M, C);
  });
  if (out.requires_grad())
    tape.record("gather_rows", [=] {
      with_kernels(x.val, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.gather_rows_backward(ctx, x.grad.dev_ptr<T>(), out.grad.dev_ptr<T>(), rows, M, C);
      });
    });
  return out;
}

Var scatter_add_rows(Tape& tape, const Var& y, const Var* w, const int* tok, const int* widx, int N) {
  int C = int(y.shape()[-1]), M = int(y.val.numel() / C);
  Var wv = w ? *w : Var{};
  bool needs = y.requires_grad() || (w && w->requires_grad());
  Var out = tape.make({N, C}, y.dtype(), needs);
  with_kernels(y.val, [&](auto& k, auto& ctx, auto tag) {
    using T = decltype(tag);
    k.fill(ctx, out.val.dev_ptr<T>(), T(0), int64_t(N) * C);
    k.scatter_add_rows_forward(ctx, out.val.dev_ptr<T>(), y.val.dev_ptr<T>(), dev_or_null<T>(wv.val), tok, widx,
                               M, C);
  });
  if (out.requires_grad())
    tape.record("scatter_add_rows", [=] {
      with_kernels(y.val, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.scatter_add_rows_backward(ctx, dev_or_null<T>(y.grad), dev_or_null<T>(wv.grad), out.grad.dev_ptr<T>(),
                                    y.val.dev_ptr<T>(), dev_or_null<T>(wv.val), tok, widx, M, C);
      });
    });
  return out;
}

}  // namespace anyk
