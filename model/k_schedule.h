// The K strategies of Matryoshka MoE (docs: /work/shared/RESEARCH.md): how many experts each layer
// activates at a given (step, micro-batch). Every draw is a pure function of (seed, step, micro,
// layer) through the counter-based RNG, so any process recomputes any step's K with no state.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace anyk {

enum class KStrategy { Fixed, Global, Micro, Layer, LayerWeighted, TopP, EMoE };

/// "fixed", "global", "micro", "layer", "layer_weighted", "top_p", "emoe"; anything else throws anyk::Error
/// listing the valid names.
KStrategy parse_k_strategy(const std::string& name);
std::string k_strategy_name(KStrategy s);

struct KScheduleConfig {
  KStrategy strategy = KStrategy::Layer;
  int k_min = 1, k_max = 4;  // range for global/micro/layer/layer_weighted; k_max caps top_p
  int k_fixed = 2;           // K of the fixed strategy, and EMoE's k_train
  int k_ideal = 0;           // emoe: the largest pool size (0: min(3 * k_train, E))
  double tau = 2.0;          // layer_weighted: P(K=k) ∝ k^(1/tau)
  double top_p = 0.5;        // top_p: per-token mass threshold (<= 1/E gives every token k_min)
  uint64_t seed = 0;
};

class KSchedule {
 public:
  /// Validates the fields the strategy uses: 1 <= k_min <= k_max <= num_experts (all but fixed),
  /// 1 <= k_fixed <= num_experts (fixed), tau > 0 (layer_weighted), 0 < top_p <= 1 (top_p).
  KSchedule(KScheduleConfig cfg, int num_layers, int num_experts);

  /// K of every layer at (step, micro): (num_layers). For top_p every entry is k_max, the cap of
  /// the per-token K that the router decides with top_p_count (model/moe_ops.h).
  std::vector<int> draw(int64_t step, int micro) const;

  /// EMoE stochastic co-activation: the pool size of every layer at (step, micro), uniform in
  /// [k_train, k_ideal] per (step, micro, layer); zeros for the other strategies.
  std::vector<int> pools(int64_t step, int micro) const;
  /// The key from which the router draws each token's k_train experts out of its pool.
  uint64_t sample_key(int64_t step, int micro) const;
  /// EMoE's resolved k_ideal (0 for the other strategies).
  int k_ideal() const { return k_ideal_; }

  const KScheduleConfig& config() const { return cfg_; }
  int num_layers() const { return num_layers_; }
  int num_experts() const { return num_experts_; }
  /// True when K varies per token (top_p).
  bool per_token() const { return cfg_.strategy == KStrategy::TopP; }

 private:
  KScheduleConfig cfg_;
  int num_layers_, num_experts_;
  int k_ideal_ = 0;
  std::vector<double> cdf_;  // (k_max - k_min + 1) cumulative layer_weighted probabilities
};

/// P(K=k) for k = k_min..k_max under layer_weighted: k^(1/tau), normalised.
std::vector<double> layer_weighted_probs(int k_min, int k_max, double tau);


}  // namespace anyk
