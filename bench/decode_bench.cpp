// Decode throughput of the KV-cache generator (model/generate.h) at K = 1, 2, 4, 8 on one set of
// weights, for a model whose experts dominate its FLOPs, and batched decode of 8 prompts against
// 8 single-prompt runs. Random weights (throughput does not depend on them); greedy decoding.
// Every round measures every setting back to back, in a rotated order, and the medians over
// rounds are reported, with the per-round ratios' medians.
//
//   build/decode_bench [--threads 1] [--rounds 5] [--new 128] [--prompt 16]
//                      [--layers 4 --dim 256 --heads 4 --experts 8 --hidden 1024] [--json F]
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "model/generate.h"
#include "runtime/rng.h"

using namespace anyk;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<int> random_tokens(int n, int vocab, uint64_t seed) {
  CounterRng r(seed, 9);
  std::vector<int> t(static_cast<size_t>(n));
  for (auto& v : t) v = int(r.next() % uint64_t(vocab));
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, rounds = 5, max_new = 128, prompt_len = 16;
  ModelConfig c;
  c.vocab = 256;
  c.layers = 4;
  c.dim = 256;
  c.heads = 4;
  c.experts = 8;
  c.expert_hidden = 1024;
  std::string json;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    int v = std::atoi(argv[i + 1]);
    if (a == "--threads") threads = v;
    else if (a == "--rounds") rounds = v;
    else if (a == "--new") max_new = v;
    else if (a == "--prompt") prompt_len = v;
    else if (a == "--layers") c.layers = v;
    else if (a == "--dim") c.dim = v;
    else if (a == "--heads") c.heads = v;
    else if (a == "--experts") c.experts = v;
    else if (a == "--hidden") c.expert_hidden = v;
    else if (a == "--json") json = argv[i + 1];
    else {
      std::fprintf(stderr, "decode_bench: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  c.seq_len = prompt_len + max_new;  // no window slides: pure decode
  omp_set_num_threads(threads);
  LocalDispatcher disp(c.experts);
  LM lm(c, disp);
  lm.init(1);
  const int E = c.experts, L = c.layers;
  std::vector<int> ks;
  for (int k = 1; k <= E; k *= 2) ks.push_back(k);
  const int nb = 8;
  std::vector<std::vector<int>> prompts;
  for (int i = 0; i < nb; ++i) prompts.push_back(random_tokens(prompt_len, c.vocab, 100 + uint64_t(i)));

  std::printf("decode_bench: %s | %d threads | prompt %d, %d new tokens | %d rounds (medians)\n",
              c.summary().c_str(), threads, prompt_len, max_new, rounds);
  const double expert_share = double(3LL * c.expert_hidden * c.dim) /
                              (4.0 * c.dim * c.dim + c.experts * c.dim + 3.0 * c.expert_hidden * c.dim);
  std::printf("one expert is %.0f%% of a layer's per-token weights at K=1\n", 100 * expert_share);

  auto run = [&](const std::vector<std::vector<int>>& ps, int K) {
    GenerateOptions o;
    o.k = InferenceK{std::vector<int>(size_t(L), K), 0};
    o.max_new = max_new;
    GenerateStats st;
    generate(lm, ps, o, {}, &st);
    return st;
  };
  run({prompts[0]}, 1);  // warm-up: caches, page faults

  std::vector<std::vector<double>> tps(ks.size());        // single-prompt decode tok/s per K
  std::vector<double> r14;                                // per-round K=1 / K=4
  std::vector<std::vector<double>> batched(ks.size()), singles(ks.size()), bratio(ks.size());
  for (int r = 0; r < rounds; ++r) {
    for (size_t j = 0; j < ks.size(); ++j) {
      size_t i = (j + size_t(r)) % ks.size();  // rotate the order across rounds
      tps[i].push_back(run({prompts[0]}, ks[i]).decode_tps());
    }
    r14.push_back(tps[0].back() / tps[std::min<size_t>(2, ks.size() - 1)].back());
    for (size_t i = 0; i < ks.size(); ++i) {
      if (ks[i] != 1 && ks[i] != 4) continue;
      GenerateStats b = run(prompts, ks[i]);
      double single_tokens = 0, single_seconds = 0;
      for (int p = 0; p < nb; ++p) {
        GenerateStats s = run({prompts[size_t(p)]}, ks[i]);
        single_tokens += double(s.decoded);
        single_seconds += s.decode_seconds;
      }
      batched[i].push_back(b.decode_tps());
      singles[i].push_back(single_tokens / single_seconds);
      bratio[i].push_back(b.decode_tps() / (single_tokens / single_seconds));
    }
  }

  std::printf("\nsingle-prompt decode (greedy, KV cache):\n");
  std::printf("K | decode tok/s (median) | min..max       | active params/token | GFLOP/token\n");
  std::printf("--+-----------------------+----------------+---------------------+------------\n");
  std::string js = "{\"model\": \"" + c.summary() + "\", \"threads\": " + std::to_string(threads) +
                   ", \"rounds\": " + std::to_string(rounds) + ", \"single\": [";
  for (size_t i = 0; i < ks.size(); ++i) {
    auto [mn, mx] = std::minmax_element(tps[i].begin(), tps[i].end());
    double ap = double(c.active_params(ks[i]));
    std::printf("%d | %21.1f | %6.1f..%-6.1f | %19.0f | %10.4f\n", ks[i], median(tps[i]), *mn, *mx, ap,
                2 * ap / 1e9);
    js += (i ? ", " : "") + std::string("{\"k\": ") + std::to_string(ks[i]) +
          ", \"decode_tps\": " + std::to_string(median(tps[i])) + ", \"active_params\": " + std::to_string(ap) + "}";
  }
  std::printf("K=1 / K=4 decode speed, same weights, side by side: %.2fx (median of per-round ratios; goal >= 1.6x)\n",
              median(r14));
  js += "], \"k1_over_k4\": " + std::to_string(median(r14)) + ", \"batched\": [";
  std::printf("\nbatched decode, %d prompts in one batch vs %d single-prompt runs (decode tok/s, all prompts):\n", nb, nb);
  bool first = true;
  for (size_t i = 0; i < ks.size(); ++i) {
    if (batched[i].empty()) continue;
    std::printf("K=%d: batched %.1f tok/s, singles %.1f tok/s -> %.2fx (median of per-round ratios; goal >= 3x)\n",
                ks[i], median(batched[i]), median(singles[i]), median(bratio[i]));
    js += (first ? "" : ", ") + std::string("{\"k\": ") + std::to_string(ks[i]) +
          ", \"batched_tps\": " + std::to_string(median(batched[i])) +
          ", \"single_tps\": " + std::to_string(median(singles[i])) +
          ", \"ratio\": " + std::to_string(median(bratio[i])) + "}";
    first = false;
  }
  js += "]}\n";
  if (!json.empty()) std::ofstream(json) << js;
  return 0;
}
