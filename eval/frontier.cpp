// The cost/quality frontier of `anyk eval --frontier`; see frontier.h.
#include "launch/frontier.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "launch/analysis.h"
#include "launch/report.h"
#include "model/generate.h"
#include "runtime/check.h"

namespace anyk::launch {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void write_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    ANYK_CHECK(out, "cannot write " << tmp << " hint: check the directory exists and is writable");
    out << text;
    out.flush();
    ANYK_CHECK(out, "writing " << tmp << " failed hint: check free space");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  ANYK_CHECK(!ec, "cannot rename " << tmp << " to " << path << ": " << ec.message());
}

}  // namespace

std::vector<double> parse_double_list(const std::string& text, const std::string& option) {
  std::vector<double> out;
  size_t i = 0;
  while (i <= text.size()) {
    size_t j = text.find(',', i);
    if (j == std::string::npos) j = text.size();
    std::string item = text.substr(i, j - i);
    char* end = nullptr;
    double v = item.empty() ? 0 : std::strtod(item.c_str(), &end);
    ANYK_CHECK(!item.empty() && end == item.c_str() + item.size(),
               "--" << option << " '" << text << "': '" << item
                    << "' is not a number hint: use a comma-separated list such as 1.5,2.5");
    out.push_back(v);
    i = j + 1;
  }
  return out;
}

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
  std::string s = "{\"frontier\": [";
  for (size_t i = 0; i < ps.size(); ++i) {
    const auto& p = ps[i];
    s += i ? ",\n  " : "\n  ";
    s += "{\"name\": " + json_string(p.eval.name) + ", \"kind\": " + json_string(p.kind) + ", \"k\": [";
    for (size_t j = 0; j < p.eval.k.size(); ++j) s += (j ? ", " : "") + std::to_string(p.eval.k[j]);
    s += "], \"val_loss\": " + json_number(p.eval.loss) + ", \"bits_per_byte\": " + json_number(p.eval.bits()) +
         ", \"mean_k\": " + json_number(p.mean_k) + ", \"active_params\": " + json_number(p.active_params) +
         ", \"flops_per_token\": " + json_number(p.flops_per_token) +
         ", \"decode_tokens_per_s\": " + json_number(p.decode_tps) +
         ", \"prompt_tokens_per_s\": " + json_number(p.prompt_tps) + "}";
  }
  return s + "\n]}\n";
}

int frontier_command(const LM& lm, const data::Loader& val, const FrontierOptions& o, Arena& arena,
                     const std::string& label, const std::string& json_path, const std::string& plot_path) {
  auto ps = measure_frontier(lm, val, o, arena);
  std::printf("%s: cost/quality frontier on %lld val windows of %d tokens; decode speed: median of %d runs of %d "
              "tokens after a %d-token prompt, 1 sequence\n",
              label.c_str(), (long long)ps[0].eval.windows, lm.config().seq_len, o.rounds, o.gen_tokens,
              std::min(o.prompt_tokens, lm.config().seq_len));
  for (const auto& line : frontier_table(ps)) std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  const std::string js = frontier_json(ps);
  if (!json_path.empty()) write_file(json_path, js);
  if (!plot_path.empty()) {
    const std::string tmp = plot_path + ".json";
    write_file(tmp, js);
    const std::string cmd = "/usr/bin/python3 '" + std::string(ANYK_SOURCE_DIR) + "/tools/plot_frontier.py' --out '" +
                            plot_path + "' --label '" + label + "' '" + tmp + "'";
    int rc = std::system(cmd.c_str());
    std::filesystem::remove(tmp);
    ANYK_CHECK(rc == 0, "plotting failed (" << cmd << ") hint: apt-get install python3-matplotlib");
  }
  return 0;
}

}  // namespace anyk::launch
