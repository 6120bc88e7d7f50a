// The autodiff tape. A Var is a value and (when it needs one) a gradient of the same shape. Ops
// append a backward closure to the tape; backward() walks it in reverse. Closures are placed in
// the step arena (no heap allocation per op) and must capture only trivially destructible data.
// Contract: every backward closure ADDS into the gradients of its inputs (+=), so a Var used
// twice, and parameters across micro-batches, accumulate naturally.
#pragma once
#include <memory>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "runtime/arena.h"
#include "runtime/tensor.h"

namespace anyk {

struct Var {
  Tensor val;   // f32 or f64; or bf16 when the tape stores activations in bf16 (then the compute
                // dtype is f32: ops widen the value to f32 to compute, and the gradient is f32)
  Tensor grad;  // undefined (data == nullptr) when no gradient is needed; always the compute dtype
  bool requires_grad() const { return grad.data != nullptr; }
  const Shape& shape() const { return val.shape; }
  // The compute dtype (what kernels, gradients and new tensors of an op use).
  DType dtype() const { return val.dtype == DType::BF16 ? DType::F32 : val.dtype; }
  bool stored_bf16() const { return val.dtype == DType::BF16; }
};

// Op names. Every op records itself on the tape under a name, and Tape::record refuses a name
// that no library has registered (a typo, or an op missing from its library's list). Each
// library lists its own ops, so runtime/ knows nothing of the layers above it: runtime's are
// kRuntimeOps below, model/ has kModelOps (model/moe_ops.h), parallel/ kParallelOps
// (parallel/all_to_all.h). A library registers its list with register_ops() from a static
// initialiser in the .cpp that defines its ops, so the names are present whenever one of those
// ops is linked. The gradient-check suite concatenates the lists and has one entry per name.
inline constexpr std::string_view kRuntimeOps[] = {
    "embedding", "linear",  "add",         "rmsnorm",     "rope",          "attention",
    "swiglu",    "cross_entropy", "gather_rows", "scatter_add_rows", "scale",   "checkpoint"};
// Adds names (string views into static storage) to the registry; returns true (for use as a
// static initialiser). Registering a name twice is harmless.
bool register_ops(std::span<const std::string_view> names);
bool is_registered_op(std::string_view name);

class Tape {
 public:
  explicit Tape(Arena& arena)
      : arena_(&arena),
        host_(arena.device() == Device::CPU ? nullptr : std::make_unique<Arena>(size_t(1) << 20)) {
    nodes_.reserve(1024);
  }
  // A child tape (the recompute of a checkpointed segment, checkpoint() below): its own list of
  // records, the parent's arenas (step, host and scratch), grad mode and activation storage.
  struct Child {};
  Tape(Child, Tape& parent)
      : arena_(parent.arena_), parent_(&parent), grad_enabled_(parent.grad_enabled_), act_bf16_(parent.act_bf16_) {}

  Arena& arena() { return *arena_; }
  // Host memory that lives as long as the recorded ops (closures, dispatch plans): the arena
  // itself on the CPU, a host arena beside it otherwise.
  Arena& host_arena() { return parent_ ? parent_->host_arena() : host_ ? *host_ : *arena_; }
  // A position in both arenas: release() gives back everything allocated in either since mark(),
  // stack fashion (a checkpointed segment's activations, closures and dispatch plans).
  struct Mark {
    Arena::Mark dev, host;
  };
  Mark mark() { return {arena_->mark(), host_arena().mark()}; }
  void release(const Mark& m) {
    if (&host_arena() != arena_) host_arena().release(m.host);
    arena_->release(m.dev);
  }
  // With grad disabled (evaluation), ops record nothing and allocate no gradients.
  bool grad_enabled() const { return grad_enabled_; }
  void set_grad_enabled(bool on) { grad_enabled_ = on; }

  // A fresh tensor of compute dtype dt: value uninitialised, gradient zeroed when `needs_grad`
  // and grad is on. The value is stored in dt (losses, router probabilities, anything kept f32).
  Var make(Shape s, DType dt, bool needs_grad) { return make_stored(s, dt, dt, needs_grad); }
  // An activation: like make(), but with bf16 activation storage on (set_activation_storage) an
  // f32 value is stored in bf16 (half the memory; the gradient stays f32). Ops write it through
  // Staging (runtime/ops/staging.h), which rounds f32 results to bf16 (nearest even).
  Var make_act(Shape s, DType dt, bool needs_grad) {
    return make_stored(s, dt, act_bf16_ && dt == DType::F32 ? DType::BF16 : dt, needs_grad);
  }
  // An output stored like `like` (element-wise ops and row movement keep their input's storage,
  // so the residual stream stays bf16 and an f32 loss stays f32).
  Var make_like(const Var& like, Shape s, bool needs_grad) {
    return make_stored(s, like.dtype(), like.val.dtype, needs_grad);
  }

  // bf16 activation storage (--precision bf16): off by default. Ops then keep activations in
  // bf16 and widen them to f32 in a scratch arena (freed after each op) to compute.
  void set_activation_storage(DType d);
  bool activations_bf16() const { return act_bf16_; }
  // The scratch arena for one op's temporaries, given back when the op is done (Staging in
  // runtime/ops/staging.h): widened bf16 copies, and backward workspaces such as the
  // attention's. Created on first use, on the arena's device.
  Arena& scratch();
  // Bytes the scratch arena has needed at most (0 before its first use).
  size_t scratch_high_water() const { return scratch_ ? scratch_->high_water() : 0; }
  // Keeps activations in their compute dtype while it lives (the router's logits: expert
  // choice is decided in f32).
  class F32Scope {
   public:
    explicit F32Scope(Tape& t) : t_(t), was_(t.act_bf16_) { t.act_bf16_ = false; }
    ~F32Scope() { t_.act_bf16_ = was_; }
    F32Scope(const F32Scope&) = delete;
    F32Scope& operator=(const F32Scope&) = delete;

   private:
    Tape& t_;
    bool was_;
  };

  template <class F> void record(std::string_view op, F&& fn) {
    using Fn = std::decay_t<F>;
    static_assert(std::is_trivially_destructible_v<Fn>,
                  "tape closures live in the arena and are never destroyed: capture views only");
    if (!grad_enabled_) return;
    check_op_name(op);
    void* mem = host_arena().alloc(sizeof(Fn), alignof(Fn) > 64 ? alignof(Fn) : 64);
    Fn* p = new (mem) Fn(std::forward<F>(fn));
    nodes_.push_back(Node{op, [](void* q) { (*static_cast<Fn*>(q))(); }, p});
  }

  // Seeds d(loss) = 1 (loss must be a scalar with a gradient) and runs every closure in reverse.
  void backward(const Var& loss);
  // Runs every closure in reverse with the output gradients already seeded by the caller.
  void backward_seeded();
  // Forget the recorded ops (the owner resets the arena separately).
  void clear() {
    nodes_.clear();
    if (host_) host_->reset();
  }

  size_t size() const { return nodes_.size(); }
  std::string_view op_at(size_t i) const { return nodes_[i].op; }

 private:
  static void check_op_name(std::string_view op);
  Var make_stored(Shape s, DType dt, DType stored, bool needs_grad) {
    Var v;
    v.val = arena_->tensor(s, stored, false);
    if (needs_grad && grad_enabled_) v.grad = arena_->tensor(s, dt, true);
    return v;
  }
  struct Node {
    std::string_view op;
    void (*run)(void*);
    void* closure;
  };
  Arena* arena_;
  std::unique_ptr<Arena> host_;  // closures when arena_ is not host memory
  Tape* parent_ = nullptr;       // a child tape's parent (its arenas are used)
  bool grad_enabled_ = true;
  bool act_bf16_ = false;
  std::unique_ptr<Arena> scratch_;  // per-op temporaries (scratch())
  std::vector<Node> nodes_;
};

// The same Var seen with another shape of equal element count (value and gradient alike).
inline Var view(const Var& v, Shape s) {
  Var o;
  o.val = v.val.view(s);
  if (v.grad.defined()) o.grad = v.grad.view(s);
  return o;
}

// Activation recompute (gradient checkpointing) of one segment of ops. A segment computes its
// outputs from its inputs on a tape; it is run twice and must compute the same values both times
// from the same inputs (the same kernels in the same order: deterministic, any sampling keyed,
// never drawn from a stream), and use no Var but its inputs and parameters (Vars whose memory
// outlives the step).
struct CheckpointSegment {
  // in: n_in Vars; out: n_out Vars to fill. `first` is true for the forward run (the run that may
  // report statistics through ctx; it records nothing) and false for the recompute in backward.
  void (*run)(const void* ctx, Tape& tape, const Var* in, Var* out, bool first);
  const void* ctx;  // must live as long as the tape's records (e.g. in tape.host_arena())
};
// Runs `seg` on a child tape with grad off, copies its outputs into `out` (n_out Vars the caller
// made on `tape` with the outputs' shapes and storage, gradients included) and gives back
// everything else the run allocated: of the segment, only its inputs and outputs stay alive.
// Records one op, "checkpoint", whose backward runs the segment again on a child tape with grad
// on, seeds the recomputed outputs' gradients with those of `out`, runs the child's records in
// reverse (into the inputs' gradients and the parameters'), and gives back everything it
// allocated. Gradients equal those of the segment recorded directly on `tape`, bit for bit: the
// same closures run in the same order and add into the same gradients. Needs grad on (with it
// off there is nothing to keep: run the segment on the tape directly).
void checkpoint(Tape& tape, const CheckpointSegment& seg, const Var* in, int n_in, Var* out, int n_out);

// Whether any of the inputs needs a gradient (then the output does too).
inline bool any_grad(std::initializer_list<const Var*> vs) {
  for (const Var* v : vs)
    if (v->requires_grad()) return true;
  return false;
}

}  // namespace anyk
