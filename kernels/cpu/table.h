// The CPU backend's kernel tables (kernels/kernels.h), one per scalar type. Only the registry
// and tests of the CPU backend include this header.
#pragma once
#include "kernels/kernels.h"

namespace anyk::cpu {

template <class T> const Kernels<T>& kernel_table();

}  // namespace anyk::cpu
