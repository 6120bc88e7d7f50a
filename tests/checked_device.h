// The checked pseudo-device for the suites: the product's debugging device (runtime/checked_device.h),
// also reachable as anyk::test::* as before. The suites switch strict mode on where they prove
// that no host code touches its memory.
#pragma once
#include "runtime/checked_device.h"

namespace anyk::test {
using anyk::checked_pool;
using anyk::CheckedPool;
using anyk::register_checked_device;
}  // namespace anyk::test
