// Elastic-inference tools behind `anyk eval --budget` and `anyk eval --analyze`: a greedy
// per-layer K allocation under an average-K budget, and router analysis (expert load per layer,
// co-activation of expert pairs, stability of the router's ranking across K).
#pragma once
#include <string>
#include <vector>

#include "eval/evaluate.h"

namespace anyk::eval {

struct BudgetResult {
  EvalResult greedy;                 // the schedule found
  EvalResult balanced;               // the most even schedule of the same total cost
  std::vector<std::string> trace;    // one line per greedy increment
};

// Greedy allocation: every layer starts at K = 1 (the cheapest); while the total is below
// round(budget * L), give one more expert to the layer whose increment lowers the validation
// loss the most (ties: the earlier layer). budget must lie in [1, E].
BudgetResult greedy_budget(const LM& lm, const data::Loader& val, double budget, int B, int64_t windows,
                           Arena& arena);

// How concentrated the router's probabilities are, averaged over N tokens of E probabilities:
// the top-1 probability, the mass of the top K, and the entropy in bits (log2 E when uniform,
// 0 when one-hot).
struct Sharpness {
  double max_prob = 0, topk_mass = 0, entropy_bits = 0;  // max_prob: the top-1 probability
};
Sharpness router_sharpness(const float* probs, int64_t N, int E, int K);

// Router analysis at a uniform K. Prints a report to stdout and returns it as JSON:
// {"k", "load": [L][E] fraction of assignments, "coactivation": [L][E][E] counts of tokens that
//  chose both, "sharpness": [L] Sharpness as {"max_prob", "topk_mass", "entropy_bits"},
//  "spearman": [{"k", "per_layer": [L] mean over tokens}] comparing the router's
//  probabilities at K = 1 with those at each k = 2..E for the same tokens}.
std::string analyze_router(const LM& lm, const data::Loader& val, int K, int B, int64_t windows, Arena& arena);

}  // namespace anyk::eval
