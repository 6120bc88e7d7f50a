// Least-squares step-cost model and the auto-K rule; see auto_k.h.
#include "serve/auto_k.h"

#include <cmath>
#include <utility>

namespace anyk::serve {

double expected_experts(int E, const std::vector<double>& k, int n_auto, double k_auto) {
  double miss = 1;  // probability that a given expert is read by no request
  for (double ki : k) miss *= 1 - ki / E;
  for (int i = 0; i < n_auto; ++i) miss *= 1 - k_auto / E;
  return E * (1 - miss);
}

void StepCostModel::add(double R, double U, double ms) {
  const double x[3] = {1.0, R, U};
  for (double& v : xtx_) v *= forget_;
  for (double& v : xty_) v *= forget_;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) xtx_[size_t(i * 3 + j)] += x[i] * x[j];
    xty_[size_t(i)] += x[i] * ms;
  }
  ++n_;
  solve();
}

// theta = (X^T X + ridge I)^-1 X^T y by Gaussian elimination with partial pivoting. The ridge is
// small against the sums (1e-6 of the trace), so it only decides directions the data never moved.
void StepCostModel::solve() {
  double a[3][4];
  const double ridge = 1e-6 * (xtx_[0] + xtx_[4] + xtx_[8]) + 1e-12;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) a[i][j] = xtx_[size_t(i * 3 + j)] + (i == j ? ridge : 0.0);
    a[i][3] = xty_[size_t(i)];
  }
  for (int c = 0; c < 3; ++c) {
    int piv = c;
    for (int r = c + 1; r < 3; ++r)
      if (std::fabs(a[r][c]) > std::fabs(a[piv][c])) piv = r;
    for (int j = 0; j < 4; ++j) std::swap(a[c][j], a[piv][j]);
    if (std::fabs(a[c][c]) < 1e-300) return;  // keep the previous fit
    for (int r = 0; r < 3; ++r) {
      if (r == c) continue;
      const double f = a[r][c] / a[c][c];
      for (int j = c; j < 4; ++j) a[r][j] -= f * a[c][j];
    }
  }
  for (int i = 0; i < 3; ++i) theta_[size_t(i)] = a[i][3] / a[i][i];
}

double StepCostModel::predict(double R, double U) const {
  if (n_ == 0) return 0;
  return theta_[0] + theta_[1] * R + theta_[2] * U;
}

int StepCostModel::choose(const std::vector<double>& fixed_k, int n_auto, int E, double target_ms, int k_min,
                          int k_max) const {
  double r_fixed = 0;
  for (double k : fixed_k) r_fixed += k;
  for (int k = k_max; k > k_min; --k)
    if (predict(r_fixed + double(n_auto) * k, expected_experts(E, fixed_k, n_auto, k)) <= target_ms) return k;
  return k_min;
}

}  // namespace anyk::serve
