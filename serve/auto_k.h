// The cost model behind `k: "auto"` (anyk serve --target-ms-per-token): the time of one decode
// step as a function of the batch and of the experts routed, fitted to measured steps, and the
// rule that picks the K of the auto requests of a step from it. See docs/serve.md.
//
// The model: step_ms = a + b * R + c * U. R is the rows the experts compute in the step (the sum
// of the requests' K: each routed row is one expert's SwiGLU on one token), U the experts whose
// weights the step reads per layer, expected under uniform routing: U = E * (1 - prod_i (1 -
// K_i / E)) over the requests i. a is the fixed cost (dense weights, head, host round trips).
// Decode on a CPU is mostly memory-bound, so U (weights read) carries most of the cost at small
// batches and R (arithmetic) at large ones. The fit is least squares over every measured step,
// older steps weighted down by a forgetting factor (so it follows a change of load on the
// machine and stays local to the batches the server sees), with a small ridge term so a few
// steps of one shape still give a solvable system.
#pragma once
#include <array>
#include <vector>

namespace anyk::serve {

// Expected distinct experts a step reads per layer when request i routes k[i] of E experts per
// token, uniformly: E * (1 - prod_i (1 - k_i / E)); n_auto more requests at k_auto.
double expected_experts(int E, const std::vector<double>& k, int n_auto = 0, double k_auto = 0);

class StepCostModel {
 public:
  explicit StepCostModel(double forget = 0.995) : forget_(forget) {}
  // One measured step: R = the sum of its requests' K, U = expected experts read (expected_experts).
  void add(double R, double U, double ms);
  // Predicted step time; 0 before any step was added.
  double predict(double R, double U) const;
  int samples() const { return n_; }
  std::array<double, 3> coefficients() const { return theta_; }  // a, b, c

  // The rule: the largest K in [k_min, k_max] whose predicted step time, with n_auto requests at K
  // beside fixed ones at fixed_k (each request's mean K), is at most target_ms; k_min when none.
  int choose(const std::vector<double>& fixed_k, int n_auto, int E, double target_ms, int k_min, int k_max) const;

 private:
  void solve();
  double forget_;
  std::array<double, 9> xtx_{};  // weighted sums of x x^T, x = (1, R, U)
  std::array<double, 3> xty_{};  // weighted sums of x * ms
  std::array<double, 3> theta_{};
  int n_ = 0;
};

}  // namespace anyk::serve
