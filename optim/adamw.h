// AdamW with decoupled weight decay over flat float regions, plus global gradient-norm clipping.
// A region is one flat (param, grad) pair of n floats; spans mark which slices are updated and
// which of them get weight decay. Elements in no span are left untouched (frozen). Parameters,
// gradients and the moments live on the optimizer's device; the math runs in its kernels.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "runtime/device.h"

namespace anyk {

struct AdamWConfig {
  double lr = 3e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

/// One contiguous slice [offset, offset+numel) of a flat buffer and whether weight decay applies.
struct ParamSpan {
  int64_t offset;
  int64_t numel;
  bool decay;
};

/// The spans that lie in [begin, end) of a region, cut to it and shifted to start at `begin`: the
/// spans of a region's block for an optimizer that holds only that block (--zero 1).
std::vector<ParamSpan> clip_spans(const std::vector<ParamSpan>& spans, int64_t begin, int64_t end);

/// AdamW: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; mhat = m/(1-b1^t); vhat = v/(1-b2^t);
/// p -= lr*wd*p (decayed spans only); p -= lr * mhat / (sqrt(vhat) + eps).
/// cfg.lr is only a default for callers; step() takes the learning rate from the schedule.
class AdamW {
 public:
  explicit AdamW(AdamWConfig cfg, Device device = Device::CPU);

  /// Registers a flat region: param and grad are (n) floats in the device's memory, owned by the caller and must outlive
  /// the optimizer. Allocates zeroed m, v of (n). Spans must lie in [0, n) and not overlap.
  /// Returns the region index.
  int add_region(float* param, const float* grad, int64_t n, std::vector<ParamSpan> spans);

  /// One update of every region with learning rate lr; increments the step count first, so the
  /// first call uses t = 1 in the bias correction.
  void step(double lr);

  int64_t step_count() const { return t_; }
  void set_step_count(int64_t t);  // for resuming from a checkpoint

  float* m(int region);  // (n) first moment in device memory, for checkpoints (host-readable on the CPU)
  float* v(int region);  // (n) second moment in device memory, for checkpoints
  Tensor m_tensor(int region) const;  // the same as (n) f32 tensors on the optimizer's device
  Tensor v_tensor(int region) const;
  Device device() const { return device_; }
  int64_t region_size(int region) const;
  // Bytes of region's m and v buffers as allocated (DeviceBuffer sizes), e.g. to show --zero 1's shards.
  int64_t moment_bytes(int region) const;
  int num_regions() const { return static_cast<int>(regions_.size()); }
  const AdamWConfig& config() const { return cfg_; }

 private:
  struct Region {
    float* param;
    const float* grad;
    int64_t n;
    std::vector<ParamSpan> spans;
    DeviceBuffer m, v;  // (n) floats each
  };
  const Region& region_at(int region) const;
  Tensor moment(const DeviceBuffer& b, int region) const;

  AdamWConfig cfg_;
  Device device_;
  int64_t t_ = 0;
  std::vector<Region> regions_;
};

/// L2 norm over all buffers, accumulated in double in a fixed order (deterministic for any
/// thread count). Each pair is (pointer, numel), in the memory of `device`.
double global_grad_norm(const std::vector<std::pair<const float*, int64_t>>& grads, Device device = Device::CPU);

/// Scales every buffer in place by max_norm / norm when norm > max_norm (norm computed by the
/// caller, e.g. reduced over ranks); no-op for max_norm <= 0 or a non-finite norm.
void scale_to_norm(const std::vector<std::pair<float*, int64_t>>& grads, double norm, double max_norm,
                   Device device = Device::CPU);

/// Scales every buffer in place by max_norm / norm when norm > max_norm, so the new global norm
/// is max_norm. max_norm <= 0 disables clipping. A non-finite norm leaves the grads untouched (the
/// caller sees it in the return value and should skip the step). Returns the pre-clip norm.
double clip_grad_norm(const std::vector<std::pair<float*, int64_t>>& grads, double max_norm,
                      Device device = Device::CPU);

}  // namespace anyk
