// all_to_all_rows and its adjoint; see all_to_all.h.
#include "parallel/all_to_all.h"

#include <cstring>

#include "kernels/cpu/kernels.h"

namespace anyk {

[[maybe_unused]] static const bool kParallelOpsRegistered = register_ops(kParallelOps);

Var all_to_all_rows(Tape& tape, const Var& x, const int* send_counts, const int* recv_counts,
                    const Comm& comm) {
  int P = comm.size(), C = int(x.shape()[-1]);
  int64_t S = 0, R = 0;
  for (int i = 0; i < P; ++i) {
    S += send_counts[i];
    R += recv_counts[i];
  }
  ANYK_CHECK(S * C == x.val.numel(), "all_to_all_rows: " << S << " rows to send but x is " << x.shape().str());
  Var out = tape.make({R, C}, x.dtype(), x.requires_grad());
  int64_t row_bytes = int64_t(C) * int64_t(dtype_size(x.dtype()));
  comm.all_to_all_v(x.val.data, send_counts, out.val.data, recv_counts, row_bytes);
  if (out.requires_grad()) {
    const Comm* cp = &comm;
    Arena* arena = &tape.arena();
    tape.record("all_to_all_rows", [=] {
      // Gradients travel back along the same routes: counts swapped.
      Tensor back = arena->tensor({S, C}, x.dtype());
      cp->all_to_all_v(out.grad.data, recv_counts, back.data, send_counts, row_bytes);
      dispatch(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::add_backward<T>(x.grad.ptr<T>(), nullptr, back.ptr<T>(), S * C);
      });
    });
  }
  return out;
}

}  // namespace anyk
