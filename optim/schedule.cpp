// Linear-warmup + cosine learning-rate schedule (see schedule.h for the exact formula).
#include "optim/schedule.h"

#include <cmath>

#include "core/check.h"

namespace anyk {

void LrSchedule::validate() const {
  ANYK_CHECK(std::isfinite(max_lr) && max_lr >= 0.0,
             "lr schedule max_lr = " << max_lr << " must be finite and >= 0");
  ANYK_CHECK(std::isfinite(min_lr) && min_lr >= 0.0,
             "lr schedule min_lr = " << min_lr << " must be finite and >= 0");
  ANYK_CHECK(min_lr <= max_lr, "lr schedule min_lr = " << min_lr << " exceeds max_lr = " << max_lr
                                                       << "; hint: set min_lr <= max_lr");
  ANYK_CHECK(total > 0, "lr schedule total = " << total
                                               << " steps must be > 0; hint: set the number of "
                                                  "training steps");
  ANYK_CHECK(warmup >= 0, "lr schedule warmup = " << warmup << " must be >= 0; hint: use 0 for "
                                                               "no warmup");
  ANYK_CHECK(warmup <= total, "lr schedule warmup = " << warmup << " exceeds total = " << total
                                                      << "; hint: warmup must fit in the run");
}

double LrSchedule::at(int64_t step) const {
  if (step < 0) step = 0;
  if (step < warmup) return max_lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t d = total - 1 - warmup;
  if (step >= total - 1 || d <= 0) return min_lr;
  const double frac = static_cast<double>(step - warmup) / static_cast<double>(d);
  return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + std::cos(3.14159265358979323846 * frac));
}

}  // namespace anyk
