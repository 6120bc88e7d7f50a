// all_to_all_rows and its adjoint; see all_to_all.h.
#include "parallel/all_to_all.h"

#include <chrono>
#include <cstring>

#include "runtime/ops/kernel_call.h"

namespace anyk {

[[maybe_unused]] static const bool kParallelOpsRegistered = register_ops(kParallelOps);

Var all_to_all_rows(Tape& tape, const Var& x, const Tensor& send_counts, const Tensor& recv_counts,
                    const Communicator& comm, double* backward_seconds) {
  const int P = comm.size();
  const int64_t C = x.shape()[-1];
  check_counts_tensor(send_counts, P, "all_to_all_rows send_counts");
  check_counts_tensor(recv_counts, P, "all_to_all_rows recv_counts");
  int64_t S = 0, R = 0;
  for (int i = 0; i < P; ++i) {
    S += send_counts.ptr<int32_t>()[i];
    R += recv_counts.ptr<int32_t>()[i];
  }
  ANYK_CHECK(S * C == x.val.numel(), "all_to_all_rows: " << S << " rows to send but x is " << x.shape().str());
  Var out = tape.make_like(x, {R, C}, x.requires_grad());  // bf16 rows travel as bf16 (half the bytes)
  comm.all_to_all_v(x.val.view({S, C}), send_counts, out.val, recv_counts);
  if (out.requires_grad()) {
    const Communicator* cp = &comm;
    Arena* arena = &tape.arena();
    tape.record("all_to_all_rows", [=] {
      // Gradients travel back along the same routes: counts swapped.
      Tensor back = arena->tensor({S, C}, x.dtype());
      const auto t0 = std::chrono::steady_clock::now();
      cp->all_to_all_v(out.grad, recv_counts, back, send_counts);
      if (backward_seconds)
        *backward_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      with_kernels(x.grad, [&](auto& k, auto& ctx, auto tag) {
        using T = decltype(tag);
        k.accumulate(ctx, x.grad.dev_ptr<T>(), back.dev_ptr<T>(), S * C);
      });
    });
  }
  return out;
}

}  // namespace anyk
