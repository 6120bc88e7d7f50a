// Eigen views over raw row-major buffers (no copies), shared by the CPU kernels, and the macro
// that instantiates each kernel for float and double.
#pragma once
#include <Eigen/Dense>

namespace anyk::cpu {

template <class T> using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T> using MatMap = Eigen::Map<RowMat<T>>;
template <class T> using CMatMap = Eigen::Map<const RowMat<T>>;
// Row-major block with a row stride (e.g. one head's columns inside packed qkv).
template <class T> using SMatMap = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <class T> using CSMatMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

}  // namespace anyk::cpu

#define ANYK_INSTANTIATE(fn)              \
  template decltype(fn<float>) fn<float>; \
  template decltype(fn<double>) fn<double>;
