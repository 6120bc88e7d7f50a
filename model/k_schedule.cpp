// K strategies drawn from the counter-based RNG, the layer_weighted distribution, and the
// per-token top-p count. Each strategy hashes with its own stream constant so they never correlate.
#include "model/k_schedule.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "core/check.h"
#include "runtime/rng.h"

namespace anyk {

namespace {

// Stream constants for hash_key, one per strategy.
constexpr uint64_t kStreamGlobal = 0x4B5EED01ULL;
constexpr uint64_t kStreamMicro = 0x4B5EED02ULL;
constexpr uint64_t kStreamLayer = 0x4B5EED03ULL;
constexpr uint64_t kStreamLayerWeighted = 0x4B5EED04ULL;
constexpr uint64_t kStreamEMoEPool = 0x4B5EED05ULL;
constexpr uint64_t kStreamEMoESample = 0x4B5EED06ULL;

struct NamedStrategy {
  const char* name;
  KStrategy value;
};
constexpr std::array<NamedStrategy, 7> kStrategies = {{{"fixed", KStrategy::Fixed},
                                                        {"global", KStrategy::Global},
                                                        {"micro", KStrategy::Micro},
                                                        {"layer", KStrategy::Layer},
                                                        {"layer_weighted", KStrategy::LayerWeighted},
                                                        {"top_p", KStrategy::TopP},
                                                        {"emoe", KStrategy::EMoE}}};

std::string valid_names() {
  std::string s;
  for (const auto& n : kStrategies) s += (s.empty() ? "" : ", ") + std::string(n.name);
  return s;
}

}  // namespace

KStrategy parse_k_strategy(const std::string& name) {
  for (const auto& n : kStrategies)
    if (name == n.name) return n.value;
  ANYK_FAIL("unknown K strategy '" << name << "'; hint: valid names are " << valid_names());
}

std::string k_strategy_name(KStrategy s) {
  for (const auto& n : kStrategies)
    if (s == n.value) return n.name;
  ANYK_FAIL("invalid KStrategy value " << static_cast<int>(s));
}

std::vector<double> layer_weighted_probs(int k_min, int k_max, double tau) {
  ANYK_CHECK(k_min >= 1 && k_min <= k_max,
             "layer_weighted range [" << k_min << ", " << k_max
                                      << "] is invalid; hint: need 1 <= k_min <= k_max");
  ANYK_CHECK(tau > 0.0 && std::isfinite(tau),
             "layer_weighted tau = " << tau << " must be > 0; hint: the paper uses tau = 2");
  std::vector<double> w(static_cast<size_t>(k_max - k_min + 1));
  double sum = 0.0;
  for (int k = k_min; k <= k_max; ++k) sum += w[k - k_min] = std::exp(std::log(double(k)) / tau);
  for (double& x : w) x /= sum;
  return w;
}

KSchedule::KSchedule(KScheduleConfig cfg, int num_layers, int num_experts)
    : cfg_(cfg), num_layers_(num_layers), num_experts_(num_experts) {
  const std::string name = k_strategy_name(cfg_.strategy);
  ANYK_CHECK(num_layers >= 1, "K schedule: num_layers = " << num_layers << " must be >= 1");
  ANYK_CHECK(num_experts >= 1, "K schedule: num_experts = " << num_experts << " must be >= 1");
  if (cfg_.strategy == KStrategy::Fixed || cfg_.strategy == KStrategy::EMoE) {
    ANYK_CHECK(cfg_.k_fixed >= 1 && cfg_.k_fixed <= num_experts,
               "K schedule: k_fixed = " << cfg_.k_fixed << " is outside [1, " << num_experts
                                        << "] (E = " << num_experts
                                        << "); hint: set k.fixed between 1 and the expert count");
    if (cfg_.strategy == KStrategy::EMoE) {
      k_ideal_ = cfg_.k_ideal > 0 ? cfg_.k_ideal : std::min(3 * cfg_.k_fixed, num_experts);
      ANYK_CHECK(k_ideal_ >= cfg_.k_fixed && k_ideal_ <= num_experts,
                 "K schedule (emoe): k_ideal = " << k_ideal_ << " must be in [k_train = " << cfg_.k_fixed
                                                 << ", E = " << num_experts
                                                 << "]; hint: set --k-ideal between --k and --experts");
    }
    return;
  }
  ANYK_CHECK(cfg_.k_min >= 1, "K schedule (" << name << "): k_min = " << cfg_.k_min
                                             << " must be >= 1; hint: set k.min to at least 1");
  ANYK_CHECK(cfg_.k_min <= cfg_.k_max, "K schedule (" << name << "): k_min = " << cfg_.k_min
                                                      << " exceeds k_max = " << cfg_.k_max
                                                      << "; hint: set k.min <= k.max");
  ANYK_CHECK(cfg_.k_max <= num_experts,
             "K schedule (" << name << "): k_max = " << cfg_.k_max << " exceeds the number of "
                            << "experts E = " << num_experts << "; hint: set k.max <= "
                            << num_experts << " or add experts");
  if (cfg_.strategy == KStrategy::LayerWeighted) {
    ANYK_CHECK(cfg_.tau > 0.0 && std::isfinite(cfg_.tau),
               "K schedule (layer_weighted): tau = " << cfg_.tau
                                                     << " must be > 0; hint: the paper uses 2");
    const std::vector<double> p = layer_weighted_probs(cfg_.k_min, cfg_.k_max, cfg_.tau);
    double c = 0.0;
    for (double x : p) cdf_.push_back(c += x);
  }
  if (cfg_.strategy == KStrategy::TopP) {
    ANYK_CHECK(cfg_.top_p > 0.0 && cfg_.top_p <= 1.0,
               "K schedule (top_p): top_p = " << cfg_.top_p
                                              << " is outside (0, 1]; hint: the paper uses 0.1");
  }
}

std::vector<int> KSchedule::draw(int64_t step, int micro) const {
  ANYK_CHECK(step >= 0 && micro >= 0, "K schedule draw at step " << step << ", micro " << micro
                                                                 << ": both must be >= 0");
  const uint64_t seed = cfg_.seed, s = static_cast<uint64_t>(step), mb = static_cast<uint64_t>(micro);
  const uint64_t span = static_cast<uint64_t>(cfg_.k_max - cfg_.k_min + 1);
  const auto uniform_k = [&](uint64_t h) { return cfg_.k_min + static_cast<int>(uniform_int(h, span)); };
  std::vector<int> k(static_cast<size_t>(num_layers_));
  switch (cfg_.strategy) {
    case KStrategy::Fixed:
    case KStrategy::EMoE:  // EMoE computes k_train experts per token; the pool varies instead
      std::fill(k.begin(), k.end(), cfg_.k_fixed);
      break;
    case KStrategy::Global:
      std::fill(k.begin(), k.end(), uniform_k(hash_key(seed, kStreamGlobal, s)));
      break;
    case KStrategy::Micro:
      std::fill(k.begin(), k.end(), uniform_k(hash_key(seed, kStreamMicro, s, mb)));
      break;
    case KStrategy::Layer:
      for (int l = 0; l < num_layers_; ++l)
        k[l] = uniform_k(hash_key(seed, kStreamLayer, s, mb, static_cast<uint64_t>(l)));
      break;
    case KStrategy::LayerWeighted:
      for (int l = 0; l < num_layers_; ++l) {
        const double u = uniform01(hash_key(seed, kStreamLayerWeighted, s, mb, static_cast<uint64_t>(l)));
        // Inverse CDF; the last bin also catches u beyond cdf.back() from rounding.
        int j = 0;
        while (j + 1 < static_cast<int>(cdf_.size()) && u >= cdf_[j]) ++j;
        k[l] = cfg_.k_min + j;
      }
      break;
    case KStrategy::TopP:
      std::fill(k.begin(), k.end(), cfg_.k_max);
      break;
  }
  return k;
}

std::vector<int> KSchedule::pools(int64_t step, int micro) const {
  std::vector<int> p(static_cast<size_t>(num_layers_), 0);
  if (cfg_.strategy != KStrategy::EMoE) return p;
  const uint64_t span = static_cast<uint64_t>(k_ideal_ - cfg_.k_fixed + 1);
  for (int l = 0; l < num_layers_; ++l)
    p[l] = cfg_.k_fixed + static_cast<int>(uniform_int(
                              hash_key(cfg_.seed, kStreamEMoEPool, static_cast<uint64_t>(step),
                                       static_cast<uint64_t>(micro), static_cast<uint64_t>(l)),
                              span));
  return p;
}

uint64_t KSchedule::sample_key(int64_t step, int micro) const {
  return hash_key(cfg_.seed, kStreamEMoESample, static_cast<uint64_t>(step), static_cast<uint64_t>(micro));
}


}  // namespace anyk
