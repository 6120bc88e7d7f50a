// The cost/quality frontier of `anyk eval --frontier`; see frontier.h.
#include "eval/frontier.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "eval/analysis.h"
#include "io/json.h"
#include "model/generate.h"
#include "core/check.h"

namespace anyk::eval {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

std::vector<FrontierPoint> measure_frontier(const LM& lm, const data::Loader& val, const FrontierOptions& o,
                                            Arena& arena) {
  const ModelConfig& c = lm.config();
  const int L = c.layers, E = c.experts;
  ANYK_CHECK(o.gen_tokens >= 1 && o.rounds >= 1, "the frontier needs at least one token and one round");
  // The settings: every uniform K, then the greedy schedule of each budget strictly inside (1, E).
  std::vector<FrontierPoint> ps;
  for (int k = 1; k <= E; ++k) {
    FrontierPoint p;
    p.kind = "K";
    p.eval = evaluate(lm, val, std::vector<int>(size_t(L), k), o.batch, o.windows, arena, "frontier");
    ps.push_back(p);
  }
  for (double b : o.budgets) {
    ANYK_CHECK(b >= 1 && b <= E, "--frontier-budgets value " << b << " is outside [1, experts=" << E << "]");
    if (b == 1 || b == E) continue;  // the uniform K = 1 and K = E points already are those
    FrontierPoint p;
    p.kind = "budget";
    BudgetResult br = greedy_budget(lm, val, b, o.batch, o.windows, arena);
    p.eval = br.greedy;
    char name[64];
    std::snprintf(name, sizeof name, "budget %g ", b);
    p.eval.name = name + p.eval.name;
    ps.push_back(p);
  }
  // Speed: the same prompt (the start of validation window 0) at every setting, greedy decode.
  std::vector<int> in(size_t(c.seq_len)), tgt(size_t(c.seq_len));
  val.eval_window(0, in.data(), tgt.data());
  const int plen = std::max(1, std::min(o.prompt_tokens, c.seq_len));
  std::vector<std::vector<int>> prompt = {std::vector<int>(in.begin(), in.begin() + plen)};
  for (auto& p : ps) {
    double s = 0;
    for (int k : p.eval.k) s += k;
    p.mean_k = s / L;
    p.active_params = double(c.active_params(p.mean_k));
    p.flops_per_token = 2 * p.active_params;
    GenerateOptions go;
    go.k = InferenceK{p.eval.k, 0};
    go.max_new = o.gen_tokens;
    std::vector<double> dec, pre;
    for (int r = 0; r < o.rounds; ++r) {
      GenerateStats st;
      generate(lm, prompt, go, {}, &st);
      dec.push_back(st.decode_tps());
      pre.push_back(st.prompt_tps());
    }
    p.decode_tps = median(dec);
    p.prompt_tps = median(pre);
  }
  return ps;
}

std::vector<std::string> frontier_table(const std::vector<FrontierPoint>& ps) {
  std::vector<std::string> lines;
  size_t w = 7;
  for (const auto& p : ps) w = std::max(w, p.eval.name.size());
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-*s | bits/byte | decode tok/s | MFLOP/token | active params", int(w), "setting");
  lines.push_back(buf);
  lines.push_back(std::string(w, '-') + "-+-----------+--------------+-------------+--------------");
  for (const auto& p : ps) {
    std::snprintf(buf, sizeof buf, "%-*s | %9.4f | %12.1f | %11.3f | %13.0f", int(w), p.eval.name.c_str(),
                  p.eval.bits(), p.decode_tps, p.flops_per_token / 1e6, p.active_params);
    lines.push_back(buf);
  }
  return lines;
}

std::string frontier_json(const std::vector<FrontierPoint>& ps) {
  io::Json list = io::Json::array();
  for (const auto& p : ps)
    list.push_back({{"name", p.eval.name}, {"kind", p.kind}, {"k", p.eval.k}, {"val_loss", p.eval.loss},
                    {"bits_per_byte", p.eval.bits()}, {"mean_k", p.mean_k}, {"active_params", p.active_params},
                    {"flops_per_token", p.flops_per_token}, {"decode_tokens_per_s", p.decode_tps},
                    {"prompt_tokens_per_s", p.prompt_tps}});
  return io::json_text(io::Json{{"frontier", list}}) + "\n";
}

}  // namespace anyk::eval
