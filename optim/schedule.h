// Learning-rate schedule: linear warmup to max_lr, then cosine decay to min_lr at the last step.
// A plain value type; the trainer asks at(step) and hands the result to AdamW::step.
#pragma once
#include <cstdint>

namespace anyk {

/// step < warmup:              max_lr * (step + 1) / warmup
/// warmup <= step < total - 1: min_lr + (max_lr - min_lr) * (1 + cos(pi * s / d)) / 2,
///                             s = step - warmup, d = total - 1 - warmup
/// step >= total - 1:          min_lr (and after warmup, if d <= 0)
struct LrSchedule {
  double max_lr = 3e-4, min_lr = 3e-5;
  int64_t warmup = 0, total = 1;

  /// Throws anyk::Error unless 0 <= min_lr <= max_lr (finite), 0 <= warmup <= total, total > 0.
  void validate() const;
  /// Learning rate at a 0-based step; negative steps are treated as step 0.
  double at(int64_t step) const;
};

}  // namespace anyk
