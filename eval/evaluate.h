// Validation: no-grad forward passes over the first deterministic val windows at a given K per
// layer, shared by `anyk train` (periodic evals, final K-sweep) and `anyk eval`, and the K-sweep
// table and JSON they print and write.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "data/loader.h"
#include "model/lm.h"
#include "runtime/arena.h"

namespace anyk::eval {

struct EvalResult {
  std::string name;        // "K=2" or "K=4,3,2,1"
  std::vector<int> k;      // (L) K per layer
  double loss = 0;         // mean cross-entropy per token (nats)
  int64_t windows = 0, tokens = 0;
  double bits() const;     // loss / ln 2: bits per byte for byte-level data
};

// Mean CE over val windows 0..n-1 (n = max_windows, 0 or too many = all), B windows per forward.
// The model's router must use forced K (router.top_p == 0). Prints progress to stderr when the
// eval runs longer than a couple of seconds; `label` prefixes those lines.
// on_batch, when given, sees each batch's stats with the routers' probabilities and choices
// captured (ForwardStats::capture_router), for the router analysis.
EvalResult evaluate(const LM& lm, const data::Loader& val, std::span<const int> k, int B,
                    int64_t max_windows, Arena& arena, const std::string& label = "eval",
                    const std::function<void(const ForwardStats&)>& on_batch = {});

// "K=2" for a uniform list, "K=4,3,2,1" otherwise.
std::string k_setting_name(std::span<const int> k);

// The table `K | val loss (nats) | bits/byte`, one line per result.
std::vector<std::string> result_table(const std::vector<EvalResult>& rs, bool byte_tokens);
// {"results": [{"name", "k", "val_loss", "bits_per_byte", "windows", "tokens"}...]} on one line
std::string results_json(const std::vector<EvalResult>& rs);
}  // namespace anyk::eval
