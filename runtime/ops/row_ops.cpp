// Row-index ops and their gradient rules: the row gather and the weighted scatter-add, duals of
// each other (the dispatchers in parallel/ permute tokens with them).
#include <algorithm>

#include "kernels/cpu/kernels.h"
#include "runtime/ops/ops.h"

namespace anyk {

Var gather_rows(Tape& tape, const Var& x, const int* rows, int M) {
  int C = int(x.shape()[-1]);
  Var out = tape.make({M, C}, x.dtype(), x.requires_grad());
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::gather_rows_forward<T>(out.val.ptr<T>(), x.val.ptr<T>(), rows, M, C);
  });
  if (out.requires_grad())
    tape.record("gather_rows", [=] {
      dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::gather_rows_backward<T>(x.grad.ptr<T>(), out.grad.ptr<T>(), rows, M, C);
      });
    });
  return out;
}

Var scatter_add_rows(Tape& tape, const Var& y, const Var* w, const int* tok, const int* widx, int N) {
  int C = int(y.shape()[-1]), M = int(y.val.numel() / C);
  Var wv = w ? *w : Var{};
  bool needs = y.requires_grad() || (w && w->requires_grad());
  Var out = tape.make({N, C}, y.dtype(), needs);
  dispatch(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    std::fill(out.val.ptr<T>(), out.val.ptr<T>() + int64_t(N) * C, T(0));
    cpu::scatter_add_rows_forward<T>(out.val.ptr<T>(), y.val.ptr<T>(),
                                     w ? wv.val.ptr<T>() : nullptr, tok, widx, M, C);
  });
  if (out.requires_grad())
    tape.record("scatter_add_rows", [=] {
      dispatch(y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::scatter_add_rows_backward<T>(
            y.requires_grad() ? y.grad.ptr<T>() : nullptr,
            wv.requires_grad() ? wv.grad.ptr<T>() : nullptr, out.grad.ptr<T>(), y.val.ptr<T>(),
            wv.val.defined() ? wv.val.ptr<T>() : nullptr, tok, widx, M, C);
      });
    });
  return out;
}

}  // namespace anyk
