// The CPU backend's kernel tables: each entry forwards to the templated kernel in kernels.h
// (the execution context is unused: OpenMP's thread setting applies).
#include "kernels/cpu/table.h"

#include <type_traits>

#include "kernels/cpu/kernels.h"
#include "kernels/cpu/router_kernels.h"

namespace anyk::cpu {

namespace {
// A captureless generic lambda converts to the entry's function-pointer type.
#define ANYK_CPU_ENTRY(fn) [](const Ctx&, auto... a) { return fn(a...); }

template <class T> Kernels<T> make_table() {
  Kernels<T> k{};
  k.fill = ANYK_CPU_ENTRY(fill<T>);
  k.copy = ANYK_CPU_ENTRY(copy<T>);
  k.accumulate = ANYK_CPU_ENTRY(accumulate<T>);
  k.fill_div = ANYK_CPU_ENTRY(fill_div<T>);
  k.sum_div = ANYK_CPU_ENTRY(sum_div<T>);
  k.sumsq_accumulate = ANYK_CPU_ENTRY(sumsq_accumulate<T>);
  k.first_bad_id = ANYK_CPU_ENTRY(first_bad_id);
  k.embedding_forward = ANYK_CPU_ENTRY(embedding_forward<T>);
  k.embedding_backward = ANYK_CPU_ENTRY(embedding_backward<T>);
  k.linear_forward = ANYK_CPU_ENTRY(linear_forward<T>);
  k.linear_backward = ANYK_CPU_ENTRY(linear_backward<T>);
  k.add_forward = ANYK_CPU_ENTRY(add_forward<T>);
  k.add_backward = ANYK_CPU_ENTRY(add_backward<T>);
  k.scale_forward = ANYK_CPU_ENTRY(scale_forward<T>);
  k.scale_backward = ANYK_CPU_ENTRY(scale_backward<T>);
  k.rmsnorm_forward = ANYK_CPU_ENTRY(rmsnorm_forward<T>);
  k.rmsnorm_backward = ANYK_CPU_ENTRY(rmsnorm_backward<T>);
  k.rope_tables = ANYK_CPU_ENTRY(rope_tables<T>);
  k.rope_forward = ANYK_CPU_ENTRY(rope_forward<T>);
  k.rope_backward = ANYK_CPU_ENTRY(rope_backward<T>);
  k.attention_forward = ANYK_CPU_ENTRY(attention_forward<T>);
  k.attention_backward = ANYK_CPU_ENTRY(attention_backward<T>);
  k.swiglu_forward = ANYK_CPU_ENTRY(swiglu_forward<T>);
  k.swiglu_backward = ANYK_CPU_ENTRY(swiglu_backward<T>);
  k.cross_entropy_forward = ANYK_CPU_ENTRY(cross_entropy_forward<T>);
  k.cross_entropy_backward = ANYK_CPU_ENTRY(cross_entropy_backward<T>);
  k.gather_rows_forward = ANYK_CPU_ENTRY(gather_rows_forward<T>);
  k.gather_rows_backward = ANYK_CPU_ENTRY(gather_rows_backward<T>);
  k.scatter_add_rows_forward = ANYK_CPU_ENTRY(scatter_add_rows_forward<T>);
  k.scatter_add_rows_backward = ANYK_CPU_ENTRY(scatter_add_rows_backward<T>);
  k.grouped_linear_forward = ANYK_CPU_ENTRY(grouped_linear_forward<T>);
  k.grouped_linear_backward = ANYK_CPU_ENTRY(grouped_linear_backward<T>);
  k.adamw_update = ANYK_CPU_ENTRY(adamw_update<T>);
  k.router_forward = ANYK_CPU_ENTRY(router_forward<T>);
  k.router_backward = ANYK_CPU_ENTRY(router_backward<T>);
  k.top_p_count_forward = ANYK_CPU_ENTRY(top_p_count_forward<T>);
  k.emoe_sample_forward = ANYK_CPU_ENTRY(emoe_sample_forward<T>);
  k.expert_counts = ANYK_CPU_ENTRY(expert_counts);
  k.lb_loss_forward = ANYK_CPU_ENTRY(lb_loss_forward<T>);
  k.lb_loss_backward = ANYK_CPU_ENTRY(lb_loss_backward<T>);
  k.z_loss_forward = ANYK_CPU_ENTRY(z_loss_forward<T>);
  k.z_loss_backward = ANYK_CPU_ENTRY(z_loss_backward<T>);
  k.kl_loss_forward = ANYK_CPU_ENTRY(kl_loss_forward<T>);
  k.kl_loss_backward = ANYK_CPU_ENTRY((kl_loss_backward<T, T>));
  k.kl_loss_backward_f64 = ANYK_CPU_ENTRY((kl_loss_backward<T, double>));
  k.router_aux_forward = ANYK_CPU_ENTRY((router_aux_forward<T, T>));
  k.router_aux_forward_f64 = ANYK_CPU_ENTRY((router_aux_forward<T, double>));
  k.router_aux_backward = ANYK_CPU_ENTRY((router_aux_backward<T, T>));
  k.router_aux_backward_f64 = ANYK_CPU_ENTRY((router_aux_backward<T, double>));
  k.convert_from_f64 = ANYK_CPU_ENTRY((convert<T, double>));
  k.attention_cached_forward = ANYK_CPU_ENTRY(attention_cached_forward<T>);
  k.linear_rows_forward = ANYK_CPU_ENTRY(linear_rows_forward<T>);
  if constexpr (std::is_same_v<T, float>) {
    k.to_bf16 = ANYK_CPU_ENTRY(to_bf16);
    k.from_bf16 = ANYK_CPU_ENTRY(from_bf16);
  }
  return k;
}
#undef ANYK_CPU_ENTRY
}  // namespace

template <class T> const Kernels<T>& kernel_table() {
  static const Kernels<T> table = make_table<T>();
  return table;
}

template const Kernels<float>& kernel_table<float>();
template const Kernels<double>& kernel_table<double>();

}  // namespace anyk::cpu
