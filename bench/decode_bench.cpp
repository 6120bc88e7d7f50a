// Decode throughput of the KV-cache generator (model/generate.h) at K = 1, 2, 4, 8 on one set of
// weights, for a model whose experts dominate its FLOPs, and batched decode of 8 prompts against
// 8 single-prompt runs. Random weights (throughput does not depend on them). The K sweep decodes
// greedily; the batched comparison samples (--temperature 1, a fixed seed; batched and single runs
// produce the same tokens): greedy decoding of a random model repeats one token, so a prompt alone
// routes to the same experts at every step and reads them from the cache, not from memory (counted:
// one expert per layer for all 128 steps), which no text does.
// Every round measures every setting back to back, in a rotated order, and the medians over
// rounds are reported, with the per-round ratios' medians.
//
// The bound on batched/singles: a decode step reads every dense weight (attention, router, norms,
// head) once whatever the batch, and each expert that at least one of its tokens routes to. One
// prompt at a time reads the dense weights and K experts per layer for each token; a batch of 8
// reads the dense weights once and the distinct experts its 8 tokens touch (E (1 - (1 - K/E)^8) per
// layer under uniform routing; the bench also counts them from the decoder's routing). If decode
// is bound by reading weights, batched/singles can reach at most 8 x (bytes per single token) /
// (bytes per batched step); the bench prints that bound and the fraction of it achieved.
// Each token also reads its own sequence's KV cache (keys and values of every layer up to its
// position: 0.66 MB on average at prompt 16, 128 new, C 256, 4 layers, f32), which batching does
// not share: the bound counts it (8 caches per batched step, one per single token), and prints the
// weights-only bound beside it. Profiles of the batched step put the attention at 8-12% of its
// time, in line with those bytes (about 8% of a K=1 step's).
//
//   build/decode_bench [--threads 1] [--rounds 5] [--new 128] [--prompt 16] [--sweep 1]
//                      [--temperature 1] [--clock wall|cpu] [--singles 1] [--weights f32|bf16]
//                      [--layers 4 --dim 256 --heads 4 --experts 8 --hidden 1024] [--json F]
// --sweep 0 skips the single-prompt K sweep (only the batched comparison at K=1 and K=4);
// --singles 0 also skips the single-prompt runs of that comparison (to profile the batch alone).
// --clock cpu times decode by the process's CPU time instead of the wall clock: on a machine
// shared with other jobs, time spent descheduled then does not count (at 1 thread).
// --weights bf16 decodes from a bf16 copy of the matrices (DecodeWeights::bf16, model/generate.h):
// the bound then counts 2 bytes for each weight of those matrices (attention projections, experts,
// head) and 4 for the routers and norms; the KV cache stays f32.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "model/generate.h"
#include "runtime/rng.h"

using namespace anyk;
using bench::median;

namespace {

std::vector<int> random_tokens(int n, int vocab, uint64_t seed) {
  CounterRng r(seed, 9);
  std::vector<int> t(static_cast<size_t>(n));
  for (auto& v : t) v = int(r.next() % uint64_t(vocab));
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, rounds = 5, max_new = 128, prompt_len = 16, sweep = 1, singles_on = 1;
  ModelConfig c;
  c.vocab = 256;
  c.layers = 4;
  c.dim = 256;
  c.heads = 4;
  c.experts = 8;
  c.expert_hidden = 1024;
  std::string json, clock_name = "wall", weights_name = "f32";
  double temperature = 1.0;  // of the batched comparison
  for (int i = 1; i < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: decode_bench [--threads 1] [--rounds 5] [--new 128] [--prompt 16] [--sweep 1] "
                  "[--temperature 1] [--clock wall|cpu] [--singles 1] [--weights f32|bf16] [--layers 4 --dim 256 --heads 4 "
                  "--experts 8 --hidden 1024] [--json F]\n(see the comment at the top of bench/decode_bench.cpp)\n");
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "decode_bench: option %s needs a value (--help lists them)\n", a.c_str());
      return 2;
    }
    int v = std::atoi(argv[i + 1]);
    if (a == "--threads") threads = v;
    else if (a == "--rounds") rounds = v;
    else if (a == "--new") max_new = v;
    else if (a == "--prompt") prompt_len = v;
    else if (a == "--sweep") sweep = v;
    else if (a == "--singles") singles_on = v;
    else if (a == "--layers") c.layers = v;
    else if (a == "--dim") c.dim = v;
    else if (a == "--heads") c.heads = v;
    else if (a == "--experts") c.experts = v;
    else if (a == "--hidden") c.expert_hidden = v;
    else if (a == "--json") json = argv[i + 1];
    else if (a == "--temperature") temperature = std::atof(argv[i + 1]);
    else if (a == "--clock" && (std::string(argv[i + 1]) == "wall" || std::string(argv[i + 1]) == "cpu"))
      clock_name = argv[i + 1];
    else if (a == "--weights" && (std::string(argv[i + 1]) == "f32" || std::string(argv[i + 1]) == "bf16"))
      weights_name = argv[i + 1];
    else if (a == "--weights") {
      std::fprintf(stderr, "decode_bench: --weights takes f32 or bf16, got '%s'\n", argv[i + 1]);
      return 2;
    } else {
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

  const bool bf16 = weights_name == "bf16";
  std::printf("decode_bench: %s | %d threads | prompt %d, %d new tokens | %d rounds (medians) | %s clock | %s weights\n",
              c.summary().c_str(), threads, prompt_len, max_new, rounds, clock_name.c_str(), weights_name.c_str());
  const double expert_share = double(3LL * c.expert_hidden * c.dim) /
                              (4.0 * c.dim * c.dim + c.experts * c.dim + 3.0 * c.expert_hidden * c.dim);
  std::printf("one expert is %.0f%% of a layer's per-token weights at K=1\n", 100 * expert_share);

  auto run = [&](const std::vector<std::vector<int>>& ps, int K, double temp = 0) {
    GenerateOptions o;
    o.sample.temperature = temp;
    o.sample.seed = 7;
    o.k = InferenceK{std::vector<int>(size_t(L), K), 0};
    o.max_new = max_new;
    o.weights = bf16 ? DecodeWeights::bf16 : DecodeWeights::f32;
    GenerateStats st;
    generate(lm, ps, o, {}, &st);
    if (clock_name == "cpu") st.decode_seconds = st.decode_cpu_seconds;
    return st;
  };
  run({prompts[0]}, 1);  // warm-up: caches, page faults

  std::vector<std::vector<double>> tps(ks.size());        // single-prompt decode tok/s per K
  std::vector<double> r14;                                // per-round K=1 / K=4
  std::vector<std::vector<double>> batched(ks.size()), singles(ks.size()), bratio(ks.size());
  std::vector<std::vector<double>> touched(ks.size());  // distinct experts per layer per batched step
  for (int r = 0; r < rounds; ++r) {
    for (size_t j = 0; j < ks.size() && sweep; ++j) {
      size_t i = (j + size_t(r)) % ks.size();  // rotate the order across rounds
      tps[i].push_back(run({prompts[0]}, ks[i]).decode_tps());
    }
    if (sweep) r14.push_back(tps[0].back() / tps[std::min<size_t>(2, ks.size() - 1)].back());
    for (size_t i = 0; i < ks.size(); ++i) {
      if (ks[i] != 1 && ks[i] != 4) continue;
      GenerateStats b = run(prompts, ks[i], temperature);
      double single_tokens = 0, single_seconds = 0;
      for (int p = 0; p < nb && singles_on; ++p) {
        GenerateStats s = run({prompts[size_t(p)]}, ks[i], temperature);
        single_tokens += double(s.decoded);
        single_seconds += s.decode_seconds;
      }
      batched[i].push_back(b.decode_tps());
      touched[i].push_back(b.decode_experts);
      const double stps = single_seconds > 0 ? single_tokens / single_seconds : 0;
      singles[i].push_back(stps);
      bratio[i].push_back(stps > 0 ? b.decode_tps() / stps : 0);
    }
  }

  if (sweep) std::printf("\nsingle-prompt decode (greedy, KV cache):\n");
  std::printf("K | decode tok/s (median) | min..max       | active params/token | GFLOP/token\n");
  std::printf("--+-----------------------+----------------+---------------------+------------\n");
  std::string js = "{\"model\": \"" + c.summary() + "\", \"weights\": \"" + weights_name +
                   "\", \"threads\": " + std::to_string(threads) +
                   ", \"rounds\": " + std::to_string(rounds) + ", \"single\": [";
  for (size_t i = 0; i < ks.size() && sweep; ++i) {
    auto [mn, mx] = std::minmax_element(tps[i].begin(), tps[i].end());
    double ap = double(c.active_params(ks[i]));
    std::printf("%d | %21.1f | %6.1f..%-6.1f | %19.0f | %10.4f\n", ks[i], median(tps[i]), *mn, *mx, ap,
                2 * ap / 1e9);
    js += (i ? ", " : "") + std::string("{\"k\": ") + std::to_string(ks[i]) +
          ", \"decode_tps\": " + std::to_string(median(tps[i])) + ", \"active_params\": " + std::to_string(ap) + "}";
  }
  if (sweep)
    std::printf("K=1 / K=4 decode speed, same weights, side by side: %.2fx (median of per-round ratios; goal >= 1.6x)\n",
                median(r14));
  js += "], \"k1_over_k4\": " + std::to_string(sweep ? median(r14) : 0.0) + ", \"batched\": [";
  // Weight bytes a decode step reads (module comment): dense once per step, each expert once.
  // bf16: the matrices (attention projections, head, experts) at 2 bytes, routers and norms as stored.
  const double es = double(dtype_size(lm.params().dtype())), ms = bf16 ? 2.0 : es;
  const double dense = ms * (double(L) * 4.0 * c.dim * c.dim + double(c.vocab) * c.dim) +
                       es * (double(L) * (double(c.experts) * c.dim + 2.0 * c.dim) + c.dim);
  const double expert = ms * 3.0 * c.expert_hidden * c.dim;
  // KV cache per decoded token: decode pass s (0..max_new-2) attends over prompt + 1 + s positions.
  const double kv = es * L * 2.0 * c.dim * (prompt_len + max_new / 2.0);
  std::printf("weights read per step: dense %.2f MB (once per step), one expert %.2f MB (per layer it is used);"
              " KV cache %.2f MB per token (mean, each sequence its own)\n",
              dense / 1e6, expert / 1e6, kv / 1e6);
  std::printf("\nbatched decode, %d prompts in one batch vs %d single-prompt runs (decode tok/s, all prompts, "
              "temperature %g):\n", nb, nb, temperature);
  bool first = true;
  for (size_t i = 0; i < ks.size(); ++i) {
    if (batched[i].empty()) continue;
    const int K = ks[i];
    const double u_formula = E * (1 - std::pow(1 - double(K) / E, nb)), u = median(touched[i]);
    // Per token one prompt at a time, and per batched step of nb tokens: weights, then KV caches.
    auto bound = [&](double distinct, double kvb) {
      return nb * (dense + L * K * expert + kvb) / (dense + L * distinct * expert + nb * kvb);
    };
    const double ratio = median(bratio[i]);
    std::printf("K=%d: batched %.1f tok/s, singles %.1f tok/s -> %.2fx (median of per-round ratios)\n", K,
                median(batched[i]), median(singles[i]), ratio);
    std::printf("     experts read per layer per step: %.2f counted (%.2f uniform); bound %.2fx (%.2fx uniform;"
                " weights only %.2fx) -> %.0f%% of the bound (goal >= 80%%; %.0f%% of the weights-only bound)\n",
                u, u_formula, bound(u, kv), bound(u_formula, kv), bound(u, 0), 100 * ratio / bound(u, kv),
                100 * ratio / bound(u, 0));
    js += (first ? "" : ", ") + std::string("{\"k\": ") + std::to_string(K) +
          ", \"batched_tps\": " + std::to_string(median(batched[i])) +
          ", \"single_tps\": " + std::to_string(median(singles[i])) +
          ", \"ratio\": " + std::to_string(ratio) + ", \"experts_per_step\": " + std::to_string(u) +
          ", \"bound\": " + std::to_string(bound(u, kv)) + ", \"fraction\": " + std::to_string(ratio / bound(u, kv)) +
          ", \"bound_weights_only\": " + std::to_string(bound(u, 0)) + "}";
    first = false;
  }
  js += "]}\n";
  if (!json.empty()) std::ofstream(json) << js;
  return 0;
}
