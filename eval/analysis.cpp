// Greedy per-layer budgets and router analysis; see analysis.h.
#include "eval/analysis.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <sstream>

#include "io/json.h"
#include "core/check.h"

namespace anyk::eval {

namespace {
std::string fmt_number(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4f", v);
  return b;
}
}  // namespace

BudgetResult greedy_budget(const LM& lm, const data::Loader& val, double budget, int B, int64_t windows,
                           Arena& arena) {
  const int L = lm.config().layers, E = lm.config().experts;
  ANYK_CHECK(budget >= 1 && budget <= E, "--budget " << budget << " must be in [1, experts=" << E
                                                     << "] (the average K per layer)");
  const int total = int(std::lround(budget * L));
  BudgetResult br;
  std::vector<int> k(L, 1);
  EvalResult cur = evaluate(lm, val, k, B, windows, arena, "budget");
  br.trace.push_back("start " + cur.name + " " + fmt_number(cur.bits()) + " bits/byte");
  while (std::accumulate(k.begin(), k.end(), 0) < total) {
    int best_l = -1;
    EvalResult best;
    for (int l = 0; l < L; ++l) {
      if (k[l] >= E) continue;
      std::vector<int> t = k;
      ++t[l];
      EvalResult r = evaluate(lm, val, t, B, windows, arena, "budget");
      if (best_l < 0 || r.loss < best.loss) best_l = l, best = r;
    }
    k[best_l]++;
    cur = best;
    br.trace.push_back("layer " + std::to_string(best_l) + " -> " + cur.name + " " + fmt_number(cur.bits()) +
                       " bits/byte");
  }
  br.greedy = cur;
  std::vector<int> even(L, total / L);
  for (int l = 0; l < total % L; ++l) ++even[l];
  br.balanced = evaluate(lm, val, even, B, windows, arena, "budget");
  return br;
}

namespace {

std::vector<double> ranks(const float* v, int n) {
  std::vector<int> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int a, int b) { return v[a] < v[b]; });
  std::vector<double> r(n);
  for (int i = 0; i < n;) {  // average ranks over ties
    int j = i;
    while (j + 1 < n && v[idx[j + 1]] == v[idx[i]]) ++j;
    for (int t = i; t <= j; ++t) r[idx[t]] = 0.5 * (i + j);
    i = j + 1;
  }
  return r;
}

double spearman(const float* a, const float* b, int n) {
  auto ra = ranks(a, n), rb = ranks(b, n);
  double ma = 0, mb = 0;
  for (int i = 0; i < n; ++i) ma += ra[i] / n, mb += rb[i] / n;
  double sab = 0, saa = 0, sbb = 0;
  for (int i = 0; i < n; ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 1.0;
}

// Router probabilities and choices of every layer over the eval windows at uniform K.
struct Capture {
  std::vector<std::vector<float>> probs;  // [L] (tokens, E)
  std::vector<std::vector<int>> ids;      // [L] (tokens, K)
};

Capture capture(const LM& lm, const data::Loader& val, int K, int B, int64_t windows, Arena& arena) {
  const int L = lm.config().layers;
  Capture c;
  c.probs.resize(L);
  c.ids.resize(L);
  evaluate(lm, val, std::vector<int>(L, K), B, windows, arena, "analyze", [&](const ForwardStats& st) {
    for (int l = 0; l < L; ++l) {
      c.probs[l].insert(c.probs[l].end(), st.layers[l].probs.begin(), st.layers[l].probs.end());
      c.ids[l].insert(c.ids[l].end(), st.layers[l].ids.begin(), st.layers[l].ids.end());
    }
  });
  return c;
}

}  // namespace

Sharpness router_sharpness(const float* probs, int64_t N, int E, int K) {
  ANYK_CHECK(K >= 1 && K <= E, "router_sharpness: K = " << K << " outside [1, " << E << "]");
  Sharpness s;
  if (N == 0) return s;
  std::vector<double> p(E);
  for (int64_t n = 0; n < N; ++n) {
    for (int e = 0; e < E; ++e) p[e] = probs[size_t(n) * E + e];
    std::partial_sort(p.begin(), p.begin() + K, p.end(), std::greater<double>());
    s.max_prob += p[0];
    s.topk_mass += std::accumulate(p.begin(), p.begin() + K, 0.0);
    for (double v : p)
      if (v > 0) s.entropy_bits -= v * std::log2(v);
  }
  s.max_prob /= double(N);
  s.topk_mass /= double(N);
  s.entropy_bits /= double(N);
  return s;
}

namespace {

// Share of assignments per expert ([L][E]) and co-activation counts ([L][E*E]) at K.
void load_and_coactivation(const Capture& c, int L, int E, int K, int64_t N, std::vector<std::vector<double>>& load,
                           std::vector<std::vector<double>>& co) {
  load.assign(L, std::vector<double>(E, 0.0));
  co.assign(L, std::vector<double>(size_t(E) * E, 0.0));
  for (int l = 0; l < L; ++l) {
    double tot = 0;
    for (int64_t n = 0; n < N; ++n) {
      const int* id = &c.ids[l][size_t(n) * K];
      for (int a = 0; a < K; ++a) {
        if (id[a] < 0) continue;
        load[l][id[a]] += 1;
        tot += 1;
        for (int b = a + 1; b < K; ++b)
          if (id[b] >= 0) co[l][size_t(id[a]) * E + id[b]] += 1, co[l][size_t(id[b]) * E + id[a]] += 1;
      }
    }
    for (double& f : load[l]) f = tot > 0 ? f / tot : 0;
  }
}

// The four most frequent pairs of one layer as " (a,b) share" items.
std::string top_pairs(const std::vector<double>& co, int E, int64_t N) {
  std::vector<std::tuple<double, int, int>> pairs;
  for (int a = 0; a < E; ++a)
    for (int b = a + 1; b < E; ++b)
      if (co[size_t(a) * E + b] > 0) pairs.emplace_back(co[size_t(a) * E + b], a, b);
  std::sort(pairs.rbegin(), pairs.rend());
  std::string s;
  for (size_t i = 0; i < pairs.size() && i < 4; ++i)
    s += " (" + std::to_string(std::get<1>(pairs[i])) + "," + std::to_string(std::get<2>(pairs[i])) + ") " +
         fmt_number(std::get<0>(pairs[i]) / double(N));
  return s;
}

// Stability of the ranking: the router's probabilities for the same tokens with every layer at
// K = 1 against every layer at K = k (inputs of later layers differ with K).
io::Json spearman_section(const LM& lm, const data::Loader& val, const Capture& base, int B, int64_t windows,
                          Arena& arena, std::ostringstream& txt) {
  const int L = lm.config().layers, E = lm.config().experts;
  const int64_t N = int64_t(base.probs[0].size()) / E;
  io::Json out = io::Json::array();
  txt << "stability of the router's ranking (Spearman, K=1 vs K=k, mean over tokens, per layer):\n";
  for (int k = 2; k <= E; ++k) {
    Capture ck = capture(lm, val, k, B, windows, arena);
    io::Json per_layer = io::Json::array();
    txt << "  K=" << k << ":";
    for (int l = 0; l < L; ++l) {
      double s = 0;
      for (int64_t n = 0; n < N; ++n)
        s += spearman(&base.probs[l][size_t(n) * E], &ck.probs[l][size_t(n) * E], E);
      s /= double(N);
      per_layer.push_back(s);
      txt << " " << fmt_number(s);
    }
    out.push_back({{"k", k}, {"per_layer", per_layer}});
    txt << "\n";
  }
  return out;
}

}  // namespace

std::string analyze_router(const LM& lm, const data::Loader& val, int K, int B, int64_t windows, Arena& arena) {
  const int L = lm.config().layers, E = lm.config().experts;
  ANYK_CHECK(K >= 1 && K <= E, "--analyze at K = " << K << " is outside [1, experts=" << E << "]");
  Capture c = capture(lm, val, K, B, windows, arena);
  const int64_t N = int64_t(c.probs[0].size()) / E;
  std::vector<std::vector<double>> load, co;
  load_and_coactivation(c, L, E, K, N, load, co);
  std::ostringstream txt;
  txt << "router analysis at K=" << K << " over " << N << " tokens\n";
  txt << "expert load per layer (share of assignments; uniform = " << fmt_number(1.0 / E) << "):\n";
  for (int l = 0; l < L; ++l) {
    txt << "  layer " << l << ":";
    for (double f : load[l]) txt << " " << fmt_number(f);
    txt << "\n";
  }
  io::Json sharpness = io::Json::array(), coactivation = io::Json::array();
  txt << "router sharpness per layer (mean over tokens; uniform: top-1 " << fmt_number(1.0 / E) << ", entropy "
      << fmt_number(std::log2(double(E))) << " bits):\n";
  for (int l = 0; l < L; ++l) {
    const Sharpness sh = router_sharpness(c.probs[l].data(), N, E, K);
    sharpness.push_back({{"max_prob", sh.max_prob}, {"topk_mass", sh.topk_mass}, {"entropy_bits", sh.entropy_bits}});
    txt << "  layer " << l << ": top-1 " << fmt_number(sh.max_prob) << ", top-" << K << " mass "
        << fmt_number(sh.topk_mass) << ", entropy " << fmt_number(sh.entropy_bits) << " bits\n";
  }
  if (K >= 2) txt << "most frequent co-activated pairs (share of tokens):\n";
  for (int l = 0; l < L; ++l) {
    io::Json rows = io::Json::array();
    for (int a = 0; a < E; ++a) {
      io::Json row = io::Json::array();
      for (int b = 0; b < E; ++b) row.push_back(int64_t(co[l][size_t(a) * E + b]));
      rows.push_back(row);
    }
    coactivation.push_back(rows);
    if (K >= 2) txt << "  layer " << l << ":" << top_pairs(co[l], E, N) << "\n";
  }
  Capture base = K == 1 ? std::move(c) : capture(lm, val, 1, B, windows, arena);
  io::Json js = {{"k", K}, {"tokens", N}, {"load", load}, {"sharpness", sharpness}, {"coactivation", coactivation}};
  js["spearman"] = spearman_section(lm, val, base, B, windows, arena, txt);
  std::fputs(txt.str().c_str(), stdout);
  return io::json_text(js) + "\n";
}

}  // namespace anyk::eval
