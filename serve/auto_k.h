// The cost model behind `k: "auto"` (anyk serve --target-ms-per-token): the time of one decode
// step as a function of the batch and of the experts routed, fitted to measured steps, and the
// rule that picks the K of the auto requests of a step from it. See docs/serve.md.
//
// The model: step_ms = a + b * B + c * R, where B is the number of requests in the step and R the
// experts routed for them (the sum over requests of each one's mean K per layer). a is the fixed
// cost (dense weights streamed once, the head, the host round trips), b the per-row dense work and
// attention, c the per-routed-row expert work (each routed row is one expert's SwiGLU on one row).
// It is fitted by least squares over every measured step, the older ones weighted down by a
// forgetting factor (so it follows a change of load on the machine), with a small ridge term so a
// few steps of one shape still give a solvable system.
#pragma once
#include <array>

namespace anyk::serve {

class StepCostModel {
 public:
  explicit StepCostModel(double forget = 0.995) : forget_(forget) {}
  // One measured step: B requests, R routed experts per layer summed over them, ms wall time.
  void add(double B, double R, double ms);
  // Predicted step time; 0 before any step was added.
  double predict(double B, double R) const;
  int samples() const { return n_; }
  std::array<double, 3> coefficients() const { return theta_; }  // a, b, c

  // The rule: the largest K in [k_min, k_max] whose predicted step time, with n_auto requests at K
  // beside B - n_auto fixed ones routing r_fixed experts, is at most target_ms; k_min when none.
  int choose(int B, double r_fixed, int n_auto, double target_ms, int k_min, int k_max) const;

 private:
  void solve();
  double forget_;
  std::array<double, 9> xtx_{};  // weighted sums of x x^T, x = (1, B, R)
  std::array<double, 3> xty_{};  // weighted sums of x * ms
  std::array<double, 3> theta_{};
  int n_ = 0;
};

}  // namespace anyk::serve
