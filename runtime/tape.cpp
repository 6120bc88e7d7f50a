// Reverse walk of the tape; see tape.h.
#include "runtime/tape.h"

#include <algorithm>
#include <new>

#include "kernels/cpu/thread_governor.h"
#include "kernels/kernels.h"
#include "runtime/device.h"

namespace anyk {

namespace {
// Function-local so that registration from other translation units' static initialisers never
// runs before it exists.
std::vector<std::string_view>& op_registry() {
  static std::vector<std::string_view> names;
  return names;
}
[[maybe_unused]] const bool kRuntimeOpsRegistered = register_ops(kRuntimeOps);
}  // namespace

bool register_ops(std::span<const std::string_view> names) {
  auto& reg = op_registry();
  for (auto n : names)
    if (std::find(reg.begin(), reg.end(), n) == reg.end()) reg.push_back(n);
  return true;
}

bool is_registered_op(std::string_view name) {
  auto& reg = op_registry();
  return std::find(reg.begin(), reg.end(), name) != reg.end();
}

void Tape::check_op_name(std::string_view op) {
  ANYK_CHECK(is_registered_op(op),
             "op '" << op << "' is not a registered op. hint: add it to its library's op list "
                    "(kRuntimeOps in runtime/tape.h, kModelOps in model/moe_ops.h, kParallelOps in "
                    "parallel/all_to_all.h) and give it an entry in the gradient-check table "
                    "(tests/test_gradcheck.cpp)");
}

void Tape::set_activation_storage(DType d) {
  ANYK_CHECK(d == DType::F32 || d == DType::BF16,
             "activation storage is f32 or bf16, got " << dtype_name(d));
  act_bf16_ = d == DType::BF16;
}

Arena& Tape::scratch() {
  if (parent_) return parent_->scratch();
  if (!scratch_) scratch_ = std::make_unique<Arena>(size_t(16) << 20, arena_->device());
  return *scratch_;
}

void Tape::backward(const Var& loss) {
  ANYK_CHECK(loss.val.numel() == 1,
             "backward() needs a scalar loss, got shape " << loss.val.shape.str());
  ANYK_CHECK(loss.requires_grad(), "backward() on a loss that needs no gradient");
  dispatch(loss.dtype(), [&](auto tag) {
    using T = decltype(tag);
    kernels<T>(loss.grad.device).fill(exec_ctx(loss.grad.device), loss.grad.dev_ptr<T>(), T(1), 1);
  });
  backward_seeded();
}

void Tape::backward_seeded() {
  for (size_t i = nodes_.size(); i-- > 0;) {
    cpu::governor_tick();  // a few ns unless a window has passed (kernels/cpu/thread_governor.h)
    nodes_[i].run(nodes_[i].closure);
  }
}

namespace {
// A segment's result must have the shape and storage its caller made for it.
void check_segment_outputs(const Var* got, const Var* want, int n) {
  for (int i = 0; i < n; ++i)
    ANYK_CHECK(got[i].val.shape == want[i].val.shape && got[i].val.dtype == want[i].val.dtype,
               "checkpoint: segment output " << i << " is " << dtype_name(got[i].val.dtype) << " "
                                             << got[i].val.shape.str() << ", the caller made "
                                             << dtype_name(want[i].val.dtype) << " " << want[i].val.shape.str());
}

// The segment's inputs and outputs as arrays that live as long as the tape's records.
Var* keep_vars(Tape& tape, const Var* v, int n) {
  Var* p = static_cast<Var*>(tape.host_arena().alloc(sizeof(Var) * size_t(n), alignof(Var) < 64 ? 64 : alignof(Var)));
  for (int i = 0; i < n; ++i) new (p + i) Var(v[i]);
  return p;
}

// The backward of a checkpointed segment: recompute on a child tape, seed, reverse, give back.
void recompute_backward(Tape* tp, const CheckpointSegment& seg, const Var* in, const Var* out, int n_out) {
  const Tape::Mark m = tp->mark();
  {
    Tape child(Tape::Child{}, *tp);
    child.set_grad_enabled(true);
    std::vector<Var> y(static_cast<size_t>(n_out), Var{});
    seg.run(seg.ctx, child, in, y.data(), false);
    check_segment_outputs(y.data(), out, n_out);
    for (int i = 0; i < n_out; ++i)
      if (y[size_t(i)].grad.defined() && out[i].grad.defined()) copy(y[size_t(i)].grad, out[i].grad);
    child.backward_seeded();
  }
  tp->release(m);
}
}  // namespace

void checkpoint(Tape& tape, const CheckpointSegment& seg, const Var* in, int n_in, Var* out, int n_out) {
  ANYK_CHECK(tape.grad_enabled(), "checkpoint: grad is off; run the segment on the tape directly");
  ANYK_CHECK(n_in >= 0 && n_out >= 1, "checkpoint: " << n_in << " inputs, " << n_out << " outputs");
  Var* ins = keep_vars(tape, in, n_in);
  Var* outs = keep_vars(tape, out, n_out);
  const Tape::Mark m = tape.mark();
  {
    Tape child(Tape::Child{}, tape);
    child.set_grad_enabled(false);  // values only: the forward kernels do not depend on it
    std::vector<Var> y(static_cast<size_t>(n_out), Var{});
    seg.run(seg.ctx, child, ins, y.data(), true);
    check_segment_outputs(y.data(), out, n_out);
    for (int i = 0; i < n_out; ++i) copy(out[i].val, y[size_t(i)].val);
  }
  tape.release(m);
  Tape* tp = &tape;
  const CheckpointSegment s = seg;
  tape.record("checkpoint", [tp, s, ins, outs, n_out] { recompute_backward(tp, s, ins, outs, n_out); });
}

}  // namespace anyk
