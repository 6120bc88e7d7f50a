// Router, Experts and MoELayer; see moe.h.
#include "model/moe.h"

#include "runtime/device.h"

namespace anyk {

Router::Router(ParamStore& ps, const std::string& prefix, int C, int E)
    : ps_(&ps), w_(ps.add(prefix + ".router", {E, C}, Region::Dense, true)) {}

RouterOut router(Tape& tape, const Var& logits, int K, const RouterOptions& opt) {
  Gating g = router_gating(tape, logits, K, opt);
  Var lb = router_lb_loss(tape, g.probs, g.counts);
  Var z = router_z_loss(tape, g.lse);
  Var kl = router_kl_loss(tape, g.probs);
  RouterOut r;
  r.weights = g.weights;
  r.ids = g.ids;
  r.probs = g.probs.val;
  r.aux = router_aux(tape, lb, z, kl, opt, logits.dtype());
  r.counts = g.counts;
  r.lb = lb.val;
  r.z = z.val;
  r.kl = kl.val;
  return r;
}

RouterOut Router::forward(Tape& tape, const Var& x, int K, const RouterOptions& opt) const {
  Tape::F32Scope f32(tape);                    // logits and expert choice in f32 under bf16 storage
  Var logits = linear(tape, x, ps_->var(w_));  // (N,C) -> (N,E)
  return router(tape, logits, K, opt);
}

Experts::Experts(ParamStore& ps, const std::string& prefix, int E_local, int C, int H)
    : ps_(&ps),
      w13_(ps.add(prefix + ".experts.w13", {E_local, 2 * H, C}, Region::Expert, true)),
      w2_(ps.add(prefix + ".experts.w2", {E_local, C, H}, Region::Expert, true)) {}

Var Experts::forward(Tape& tape, const Var& rows, const Tensor& offsets, const Tensor& segments) const {
  Var h = grouped_linear(tape, rows, ps_->var(w13_), offsets, segments);  // (R,C) -> (R,2H)
  Var a = swiglu(tape, h);                                                // (R,2H) -> (R,H)
  return grouped_linear(tape, a, ps_->var(w2_), offsets, segments);       // (R,H) -> (R,C)
}

MoELayer::MoELayer(ParamStore& ps, const std::string& prefix, int C, int H, Dispatcher& d)
    : d_(&d), router_(ps, prefix, C, d.num_experts()), experts_(ps, prefix, d.num_local(), C, H) {}

Var MoELayer::forward(Tape& tape, const Var& x, int K, const RouterOptions& opt, Var* aux,
                      MoEStats* st) const {
  RouterOut r = router_.forward(tape, x, K, opt);
  // The dispatcher plans on the host: ids off the CPU come to the host, the layer's one sync.
  Tensor ids = r.ids;
  if (ids.device != Device::CPU) {
    ids = tape.host_arena().tensor(r.ids.shape, DType::I32);
    to_host(ids.ptr<int32_t>(), r.ids);
  }
  DispatchPlan plan;
  Var rows = d_->permute(tape, x, ids, plan);           // (N,C) -> (R,C) by local expert
  Var y = experts_.forward(tape, rows, plan.offsets, plan.segments);  // (R,C) -> (R,C)
  Var out = d_->unpermute(tape, y, r.weights, plan);     // (R,C) -> (N,C), weighted
  if (aux) *aux = r.aux;
  if (st) {
    st->lb_t = r.lb;
    st->z_t = r.z;
    st->kl_t = r.kl;
    st->assignments = plan.sent;  // the routed slots, counted on the host by the plan
    const int32_t* c = plan.expert_counts.ptr<int32_t>();
    st->counts.assign(c, c + plan.expert_counts.numel());
    if (st->capture) {
      const int32_t* h = ids.ptr<int32_t>();
      st->ids.assign(h, h + ids.numel());
      dispatch(r.probs.dtype, [&](auto tag) {
        using T = decltype(tag);
        std::vector<T> p = to_host_vector<T>(r.probs);  // through the copy ops: probs may be on a device
        st->probs.assign(p.begin(), p.end());
      });
    }
  }
  return out;
}

}  // namespace anyk
