// Greedy per-layer budgets and router analysis; see analysis.h.
#include "launch/analysis.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <sstream>

#include "launch/report.h"
#include "runtime/check.h"

namespace anyk::launch {

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

std::string analyze_router(const LM& lm, const data::Loader& val, int K, int B, int64_t windows, Arena& arena) {
  const int L = lm.config().layers, E = lm.config().experts;
  ANYK_CHECK(K >= 1 && K <= E, "--analyze at K = " << K << " is outside [1, experts=" << E << "]");
  Capture c = capture(lm, val, K, B, windows, arena);
  const int64_t N = int64_t(c.probs[0].size()) / E;
  std::ostringstream js, txt;
  js << "{\"k\": " << K << ", \"tokens\": " << N << ", \"load\": [";
  txt << "router analysis at K=" << K << " over " << N << " tokens\n";
  txt << "expert load per layer (share of assignments; uniform = " << fmt_number(1.0 / E) << "):\n";
  std::vector<std::vector<double>> co(L, std::vector<double>(size_t(E) * E, 0.0));
  for (int l = 0; l < L; ++l) {
    std::vector<double> load(E, 0.0);
    double tot = 0;
    for (int64_t n = 0; n < N; ++n) {
      const int* id = &c.ids[l][size_t(n) * K];
      for (int a = 0; a < K; ++a) {
        if (id[a] < 0) continue;
        load[id[a]] += 1;
        tot += 1;
        for (int b = a + 1; b < K; ++b)
          if (id[b] >= 0) co[l][size_t(id[a]) * E + id[b]] += 1, co[l][size_t(id[b]) * E + id[a]] += 1;
      }
    }
    txt << "  layer " << l << ":";
    js << (l ? ", " : "") << "[";
    for (int e = 0; e < E; ++e) {
      double f = tot > 0 ? load[e] / tot : 0;
      txt << " " << fmt_number(f);
      js << (e ? ", " : "") << json_number(f);
    }
    txt << "\n";
    js << "]";
  }
  js << "], \"sharpness\": [";
  txt << "router sharpness per layer (mean over tokens; uniform: top-1 " << fmt_number(1.0 / E) << ", entropy "
      << fmt_number(std::log2(double(E))) << " bits):\n";
  for (int l = 0; l < L; ++l) {
    const Sharpness sh = router_sharpness(c.probs[l].data(), N, E, K);
    js << (l ? ", " : "") << "{\"max_prob\": " << json_number(sh.max_prob) << ", \"topk_mass\": " << json_number(sh.topk_mass)
       << ", \"entropy_bits\": " << json_number(sh.entropy_bits) << "}";
    txt << "  layer " << l << ": top-1 " << fmt_number(sh.max_prob) << ", top-" << K << " mass "
        << fmt_number(sh.topk_mass) << ", entropy " << fmt_number(sh.entropy_bits) << " bits\n";
  }
  js << "], \"coactivation\": [";
  if (K >= 2) txt << "most frequent co-activated pairs (share of tokens):\n";
  for (int l = 0; l < L; ++l) {
    js << (l ? ", " : "") << "[";
    std::vector<std::tuple<double, int, int>> pairs;
    for (int a = 0; a < E; ++a) {
      js << (a ? ", " : "") << "[";
      for (int b = 0; b < E; ++b) {
        js << (b ? ", " : "") << co[l][size_t(a) * E + b];
        if (b > a && co[l][size_t(a) * E + b] > 0) pairs.emplace_back(co[l][size_t(a) * E + b], a, b);
      }
      js << "]";
    }
    js << "]";
    if (K >= 2) {
      std::sort(pairs.rbegin(), pairs.rend());
      txt << "  layer " << l << ":";
      for (size_t i = 0; i < pairs.size() && i < 4; ++i)
        txt << " (" << std::get<1>(pairs[i]) << "," << std::get<2>(pairs[i]) << ") "
            << fmt_number(std::get<0>(pairs[i]) / double(N));
      txt << "\n";
    }
  }
  js << "], \"spearman\": [";
  // Stability of the ranking: the router's probabilities for the same tokens with every layer at
  // K = 1 against every layer at K = k (inputs of later layers differ with K).
  Capture base = K == 1 ? std::move(c) : capture(lm, val, 1, B, windows, arena);
  txt << "stability of the router's ranking (Spearman, K=1 vs K=k, mean over tokens, per layer):\n";
  for (int k = 2; k <= E; ++k) {
    Capture ck = capture(lm, val, k, B, windows, arena);
    js << (k > 2 ? ", " : "") << "{\"k\": " << k << ", \"per_layer\": [";
    txt << "  K=" << k << ":";
    for (int l = 0; l < L; ++l) {
      double s = 0;
      for (int64_t n = 0; n < N; ++n)
        s += spearman(&base.probs[l][size_t(n) * E], &ck.probs[l][size_t(n) * E], E);
      s /= double(N);
      js << (l ? ", " : "") << json_number(s);
      txt << " " << fmt_number(s);
    }
    js << "]}";
    txt << "\n";
  }
  js << "]}\n";
  std::fputs(txt.str().c_str(), stdout);
  return js.str();
}

}  // namespace anyk::launch
