// The checked pseudo-device for the suites: the product's debugging device (runtime/checked_device.h),
// also reachable as anyk::test::* as before. The suites switch strict mode on where they prove
// that no host code touches its memory.
#pragma once
#include "runtime/checked_device.h"

namespace anyk::test {
using anyk::checked_pool;
using anyk::CheckedPool;
using anyk::register_checked_device;

// Strict mode for one scope (when on): the pool is PROT_NONE outside kernels and copy ops, so a
// host access to device memory faults.
struct Strict {
  explicit Strict(bool on = true) : on_(on) {
    if (on_) checked_pool().set_strict(true);
  }
  ~Strict() {
    if (on_) checked_pool().set_strict(false);
  }
  Strict(const Strict&) = delete;
  Strict& operator=(const Strict&) = delete;
  bool on_;
};
}  // namespace anyk::test
