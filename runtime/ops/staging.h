// bf16 activation storage inside one op (Tape::set_activation_storage). Kernels compute in f32;
// an op reads a bf16-stored value through in(), which widens it into the tape's scratch arena,
// and writes a bf16-stored output through out(), an f32 scratch target that commit() rounds into
// the bf16 storage (nearest even). The scratch is given back when the Staging dies, so it holds
// one op's inputs and outputs at a time. For values not stored in bf16 (f32 or f64 storage, the
// default) in() and out() return their argument and nothing is allocated or copied.
// Backward closures use one too: they widen the saved bf16 values again (the values the forward
// computed from, exactly: widening is exact), while gradients are f32 throughout. Kernels run in
// stream order on one device, so scratch given back after an op may be reused by the next.
#pragma once
#include <cstdint>

#include "kernels/kernels.h"
#include "runtime/tape.h"

namespace anyk {

class Staging {
 public:
  explicit Staging(Tape& t) : t_(&t) {}
  ~Staging() {
    if (marked_) t_->scratch().release(mark_);
  }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  // The f32 value of v: v itself unless it is stored in bf16, then a widened copy.
  Tensor in(const Tensor& v) {
    if (v.dtype != DType::BF16) return v;
    Tensor w = alloc(v.shape);
    if (v.numel())
      kernels<float>(v.device).from_bf16(exec_ctx(v.device), w.dev_ptr<float>(),
                                         static_cast<const uint16_t*>(v.data), v.numel());
    return w;
  }
  // Where a kernel writes v: v itself unless it is stored in bf16, then an f32 target that
  // commit() rounds into v.
  Tensor out(const Tensor& v) {
    if (v.dtype != DType::BF16) return v;
    ANYK_CHECK(n_ < kMax, "Staging: more than " << kMax << " bf16 outputs in one op");
    Tensor w = alloc(v.shape);
    pending_[n_++] = {w, v};
    return w;
  }
  // A temporary of the op (any dtype, any storage mode) in the scratch arena, given back with
  // the Staging: backward closures use it for workspaces only they read (the attention
  // backward's (B,NH,T,T) scratch would otherwise stay in the step arena for every layer).
  Tensor temp(const Shape& s, DType dt) { return alloc(s, dt); }
  // Rounds every out() target into its bf16 storage. Call once the op's kernels have run.
  void commit() {
    for (int i = 0; i < n_; ++i) {
      const Tensor& src = pending_[i].src;
      const Tensor& dst = pending_[i].dst;
      if (src.numel())
        kernels<float>(dst.device).to_bf16(exec_ctx(dst.device), static_cast<uint16_t*>(dst.data),
                                           src.dev_ptr<float>(), src.numel());
    }
    n_ = 0;
  }

 private:
  Tensor alloc(const Shape& s, DType dt = DType::F32) {
    Arena& a = t_->scratch();
    if (!marked_) {
      mark_ = a.mark();
      marked_ = true;
    }
    return a.tensor(s, dt);
  }
  static constexpr int kMax = 4;
  struct Pending {
    Tensor src, dst;
  };
  Tape* t_;
  bool marked_ = false;
  Arena::Mark mark_{};
  Pending pending_[kMax];
  int n_ = 0;
};

}  // namespace anyk
