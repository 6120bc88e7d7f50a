// Helpers shared by the test suites: move data between std::vector<double> and Vars of either
// dtype, a relative-error measure, and reading a file whole.
#pragma once
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/rng.h"
#include "runtime/tape.h"

namespace anyk::test {

inline void fill(const Tensor& t, const std::vector<double>& v) {
  dispatch(t.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < t.numel(); ++i) t.ptr<T>()[i] = T(v[i]);
  });
}

inline std::vector<double> read(const Tensor& t) {
  std::vector<double> v(t.numel());
  dispatch(t.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < t.numel(); ++i) v[i] = double(t.ptr<T>()[i]);
  });
  return v;
}

// A leaf Var (value from v, zeroed gradient) in the tape's arena.
inline Var leaf(Tape& tape, Shape s, DType dt, const std::vector<double>& v, bool grad = true) {
  Var x = tape.make(s, dt, grad);
  fill(x.val, v);
  return x;
}

inline std::vector<double> randn(size_t n, uint64_t seed, double scale = 1.0) {
  CounterRng r(seed, 77);
  std::vector<double> v(n);
  for (auto& x : v) x = scale * r.normal();
  return v;
}

// max |a - b| / max(max |b|, floor)
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b, double floor = 1e-12) {
  double num = 0, den = floor;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / den;
}

// The whole content of a file ("" when it cannot be read): for tests that run the binary.
inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace anyk::test
