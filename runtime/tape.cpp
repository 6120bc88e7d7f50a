// Reverse walk of the tape; see tape.h.
#include "runtime/tape.h"

#include <algorithm>

#include "kernels/kernels.h"

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
  for (size_t i = nodes_.size(); i-- > 0;) nodes_[i].run(nodes_[i].closure);
}

}  // namespace anyk
