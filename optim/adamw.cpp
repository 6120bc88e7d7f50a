// AdamW update and gradient-norm clipping over flat float regions. Per-element math is done in
// double and stored back as float, so results do not depend on the thread count.
#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "runtime/check.h"

namespace anyk {

namespace {
// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = int64_t(1) << 15;
}  // namespace

AdamW::AdamW(AdamWConfig cfg) : cfg_(cfg) {
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
  Region r{param, grad, n, std::move(spans), std::vector<float>(static_cast<size_t>(n), 0.0f),
           std::vector<float>(static_cast<size_t>(n), 0.0f)};
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
  for (Region& r : regions_) {
    float* p = r.param;
    const float* g = r.grad;
    float* m = r.m.data();
    float* v = r.v.data();
    for (const ParamSpan& s : r.spans) {
      const double shrink = s.decay ? 1.0 - lr * cfg_.weight_decay : 1.0;
      const int64_t lo = s.offset, hi = s.offset + s.numel;
#pragma omp parallel for schedule(static) if (s.numel >= kParallelMin)
      for (int64_t i = lo; i < hi; ++i) {
        const double gi = g[i];
        const double mi = b1 * m[i] + (1.0 - b1) * gi;
        const double vi = b2 * v[i] + (1.0 - b2) * gi * gi;
        m[i] = static_cast<float>(mi);
        v[i] = static_cast<float>(vi);
        const double denom = std::sqrt(vi) * inv_sqrt_bc2 + eps;
        p[i] = static_cast<float>(p[i] * shrink - step_size * mi / denom);
      }
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

float* AdamW::m(int region) { return const_cast<float*>(region_at(region).m.data()); }
float* AdamW::v(int region) { return const_cast<float*>(region_at(region).v.data()); }
int64_t AdamW::region_size(int region) const { return region_at(region).n; }

double global_grad_norm(const std::vector<std::pair<const float*, int64_t>>& grads) {
  // Fixed chunks summed in order: the result does not depend on the thread count or on the
  // order in which threads finish (an OpenMP reduction's would), so runs stay bit-identical.
  constexpr int64_t kChunk = 1 << 16;
  double sum = 0.0;
  for (const auto& grad : grads) {
    const float* g = grad.first;  // not a structured binding: clang < 16 cannot capture one in OpenMP
    const int64_t n = grad.second;
    ANYK_CHECK(n >= 0 && (n == 0 || g != nullptr),
               "global_grad_norm got a buffer of numel " << n << " with pointer " << g);
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> part(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t c = 0; c < chunks; ++c) {
      double acc = 0.0;
      for (int64_t i = c * kChunk, end = std::min(n, (c + 1) * kChunk); i < end; ++i)
        acc += static_cast<double>(g[i]) * g[i];
      part[c] = acc;
    }
    for (double x : part) sum += x;
  }
  return std::sqrt(sum);
}

void scale_to_norm(const std::vector<std::pair<float*, int64_t>>& grads, double norm, double max_norm) {
  if (max_norm <= 0.0 || !std::isfinite(norm) || norm <= max_norm) return;
  const float scale = static_cast<float>(max_norm / norm);
  for (const auto& grad : grads) {
    float* g = grad.first;  // not a structured binding: clang < 16 cannot capture one in OpenMP
    const int64_t n = grad.second;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) g[i] *= scale;
  }
}

double clip_grad_norm(const std::vector<std::pair<float*, int64_t>>& grads, double max_norm) {
  std::vector<std::pair<const float*, int64_t>> cgrads(grads.begin(), grads.end());
  const double norm = global_grad_norm(cgrads);
  scale_to_norm(grads, norm, max_norm);
  return norm;
}

}  // namespace anyk
