// `anyk eval --frontier`: the cost/quality frontier of one set of weights. For every uniform
// K = 1..E and the greedy per-layer schedules of a few average-K budgets: validation bits per
// byte beside measured generation speed (KV-cache decode tokens/s) and FLOPs per token.
#pragma once
#include <string>
#include <vector>

#include "eval/evaluate.h"

namespace anyk::eval {

struct FrontierPoint {
  EvalResult eval;             // name, per-layer K, val loss
  std::string kind;            // "K" (uniform) or "budget" (greedy schedule)
  double mean_k = 0;           // average K over layers
  double active_params = 0;    // per token at mean_k
  double flops_per_token = 0;  // 2 x active params (weights' multiply-adds)
  double decode_tps = 0;       // median over rounds of single-prompt decode tokens/s
  double prompt_tps = 0;       // median prompt-pass tokens/s
};

struct FrontierOptions {
  std::vector<double> budgets = {1.5, 2.5, 3.5};  // average-K budgets (those in (1, E) are used)
  int gen_tokens = 64;     // tokens generated per speed measurement
  int prompt_tokens = 32;  // prompt: the start of validation window 0
  int rounds = 3;          // speed measurements per setting (median)
  int batch = 8;           // eval windows per forward
  int64_t windows = 64;    // eval windows
};

std::vector<FrontierPoint> measure_frontier(const LM& lm, const data::Loader& val, const FrontierOptions& o,
                                            Arena& arena);
// The table `setting | bits/byte | decode tok/s | MFLOP/token | active params`.
std::vector<std::string> frontier_table(const std::vector<FrontierPoint>& ps);
// {"frontier": [{"name", "kind", "k", "val_loss", "bits_per_byte", "mean_k", "active_params",
//   "flops_per_token", "decode_tokens_per_s", "prompt_tokens_per_s"}...]} on one line
std::string frontier_json(const std::vector<FrontierPoint>& ps);
}  // namespace anyk::eval
