// AdamW update and gradient-norm clipping over flat float regions. Per-element math is done in
// double and stored back as float, so results do not depend on the thread count.
#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"
#include "core/check.h"

namespace anyk {

std::vector<ParamSpan> clip_spans(const std::vector<ParamSpan>& spans, int64_t begin, int64_t end) {
  std::vector<ParamSpan> out;
  for (const ParamSpan& s : spans) {
    const int64_t lo = std::max(s.offset, begin), hi = std::min(s.offset + s.numel, end);
    if (hi > lo) out.push_back(ParamSpan{lo - begin, hi - lo, s.decay});
  }
  return out;
}

AdamW::AdamW(AdamWConfig cfg, Device device) : cfg_(cfg), device_(device) {
  ANYK_CHECK(cfg_.beta1 >= 0.0 && cfg_.beta1 < 1.0,
             "AdamW beta1 = " << cfg_.beta1 << " is outside [0, 1); hint: use e.g. 0.9");
  ANYK_CHECK(cfg_.beta2 >= 0.0 && cfg_.beta2 < 1.0,
             "AdamW beta2 = " << cfg_.beta2 << " is outside [0, 1); hint: use e.g. 0.95");
  ANYK_CHECK(cfg_.eps > 0.0, "AdamW eps = " << cfg_.eps << " must be > 0; hint: use e.g. 1e-8");
  ANYK_CHECK(cfg_.weight_decay >= 0.0, "AdamW weight_decay = " << cfg_.weight_decay
                                           << " must be >= 0; hint: use 0 to disable decay");
  ANYK_CHECK(cfg_.lr >= 0.0, "AdamW lr = " << cfg_.lr << " must be >= 0");
}

int AdamW::add_region(float* param, const float* grad, int64_t n, std::vector<ParamSpan> spans) {
  ANYK_CHECK(n >= 0, "AdamW region size n = " << n << " is negative");
  ANYK_CHECK(n == 0 || (param != nullptr && grad != nullptr),
             "AdamW region of n = " << n << " has a null param or grad pointer");
  ANYK_CHECK(!spans.empty() || n == 0,
             "AdamW region of n = " << n << " has no spans; hint: pass {{0, n, true}} to update "
                                          "(and decay) the whole region");
  std::sort(spans.begin(), spans.end(),
            [](const ParamSpan& a, const ParamSpan& b) { return a.offset < b.offset; });
  int64_t end = 0;
  for (const ParamSpan& s : spans) {
    ANYK_CHECK(s.offset >= 0 && s.numel >= 0 && s.offset + s.numel <= n,
               "AdamW span [" << s.offset << ", " << s.offset + s.numel
                              << ") lies outside the region [0, " << n << ")");
    ANYK_CHECK(s.offset >= end, "AdamW span starting at " << s.offset
                                    << " overlaps the previous span ending at " << end
                                    << "; hint: each element must belong to at most one span");
    end = s.offset + s.numel;
  }
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  Region r{param, grad, n, std::move(spans), DeviceBuffer(device_, bytes), DeviceBuffer(device_, bytes)};
  regions_.push_back(std::move(r));
  return static_cast<int>(regions_.size()) - 1;
}

void AdamW::step(double lr) {
  ANYK_CHECK(std::isfinite(lr) && lr >= 0.0, "AdamW step got lr = " << lr
                                                 << "; hint: check the learning-rate schedule");
  ++t_;
  const double b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(t_));
  // Fold the bias corrections into the step size and eps: lr*mhat/(sqrt(vhat)+eps) ==
  // (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps).
  const double step_size = lr / bc1;
  const double inv_sqrt_bc2 = 1.0 / std::sqrt(bc2);
  const Kernels<float>& k = kernels<float>(device_);
  const Ctx& ctx = exec_ctx(device_);
  for (Region& r : regions_) {
    float* m = static_cast<float*>(r.m.data());
    float* v = static_cast<float*>(r.v.data());
    for (const ParamSpan& s : r.spans) {
      const double shrink = s.decay ? 1.0 - lr * cfg_.weight_decay : 1.0;
      const int64_t o = s.offset;
      k.adamw_update(ctx, r.param + o, m + o, v + o, r.grad + o, s.numel, b1, b2, eps, shrink, step_size,
                     inv_sqrt_bc2);
    }
  }
}

void AdamW::set_step_count(int64_t t) {
  ANYK_CHECK(t >= 0, "AdamW step count " << t << " is negative; hint: the checkpoint is corrupt");
  t_ = t;
}

const AdamW::Region& AdamW::region_at(int region) const {
  ANYK_CHECK(region >= 0 && region < static_cast<int>(regions_.size()),
             "AdamW region index " << region << " out of range [0, " << regions_.size() << ")");
  return regions_[static_cast<size_t>(region)];
}

float* AdamW::m(int region) { return static_cast<float*>(region_at(region).m.data()); }
float* AdamW::v(int region) { return static_cast<float*>(region_at(region).v.data()); }
Tensor AdamW::moment(const DeviceBuffer& b, int region) const {
  Tensor t;
  t.shape = Shape{region_at(region).n};
  t.dtype = DType::F32;
  t.device = device_;
  t.data = b.data();
  return t;
}
Tensor AdamW::m_tensor(int region) const { return moment(region_at(region).m, region); }
Tensor AdamW::v_tensor(int region) const { return moment(region_at(region).v, region); }
int64_t AdamW::region_size(int region) const { return region_at(region).n; }
int64_t AdamW::moment_bytes(int region) const {
  const Region& r = region_at(region);
  return int64_t(r.m.bytes() + r.v.bytes());
}

double global_grad_norm(const std::vector<std::pair<const float*, int64_t>>& grads, Device device) {
  // One accumulator in device memory; each buffer adds its fixed-order chunk sums in turn, so the
  // result does not depend on the thread count (an OpenMP reduction's order would).
  const Kernels<float>& k = kernels<float>(device);
  DeviceBuffer acc(device, sizeof(double));  // zeroed
  for (const auto& grad : grads) {
    const float* g = grad.first;
    const int64_t n = grad.second;
    ANYK_CHECK(n >= 0 && (n == 0 || g != nullptr),
               "global_grad_norm got a buffer of numel " << n << " with pointer " << g);
    k.sumsq_accumulate(exec_ctx(device), static_cast<double*>(acc.data()), g, n);
  }
  double sum = 0.0;
  allocator(device).to_host(&sum, acc.data(), sizeof(double));
  return std::sqrt(sum);
}

void scale_to_norm(const std::vector<std::pair<float*, int64_t>>& grads, double norm, double max_norm,
                   Device device) {
  if (max_norm <= 0.0 || !std::isfinite(norm) || norm <= max_norm) return;
  const float scale = static_cast<float>(max_norm / norm);
  const Kernels<float>& k = kernels<float>(device);
  for (const auto& grad : grads) k.scale_forward(exec_ctx(device), grad.first, grad.first, scale, grad.second);
}

double clip_grad_norm(const std::vector<std::pair<float*, int64_t>>& grads, double max_norm, Device device) {
  std::vector<std::pair<const float*, int64_t>> cgrads(grads.begin(), grads.end());
  const double norm = global_grad_norm(cgrads, device);
  scale_to_norm(grads, norm, max_norm, device);
  return norm;
}

}  // namespace anyk
