// Reverse walk of the tape; see tape.h.
#include "runtime/tape.h"

#include "kernels/kernels.h"

namespace anyk {

void Tape::check_op_name(std::string_view op) {
  for (auto name : kAllOps)
    if (name == op) return;
  ANYK_FAIL("op '" << op << "' is not listed in kAllOps (runtime/tape.h). hint: add it there and "
                      "give it an entry in the gradient-check table (tests/test_gradcheck.cpp)");
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
