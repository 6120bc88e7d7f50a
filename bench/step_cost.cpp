// The measurements behind anyk serve's auto-K rule (serve/auto_k.h): the wall time of one
// row-invariant decode step (what the server's steps are) over a grid of batch B and K, on random
// weights of a model whose experts dominate its FLOPs. Every round measures the whole grid in a
// rotated order; the table gives medians over rounds. Then the rule's model step_ms = a + b*R +
// c*U (R = B*K routed rows, U = expected experts read per layer) is fitted by least squares to the
// grid (StepCostModel, no forgetting) and its worst error over the grid is printed.
//
//   build/step_cost [--threads 1] [--rounds 3] [--steps 16]
//                   [--layers 4 --dim 256 --heads 4 --experts 8 --hidden 1024]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "model/generate.h"
#include "serve/auto_k.h"

using namespace anyk;
using bench::median;

namespace {

// Median ms of `steps` decode steps at batch B, K everywhere (after a 4-token prompt each).
double step_ms(const LM& lm, KVDecoder& dec, int B, int K, int steps) {
  const InferenceK k{std::vector<int>(size_t(lm.config().layers), K), 0};
  std::vector<int> toks(size_t(B) * 4);  // different tokens per sequence: their rows route differently
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int((i * 37 + 11) % size_t(lm.config().vocab));
  std::vector<Segment> segs;
  for (int s = 0; s < B; ++s) {
    dec.reset(s);
    segs.push_back(Segment{s, toks.data() + 4 * s, 4, nullptr, nullptr});
  }
  std::vector<double> logits;
  dec.set_row_invariant(false);
  dec.forward(segs, k, logits);
  dec.set_row_invariant(true);
  for (auto& s : segs) s.n = 1;
  std::vector<double> t;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    dec.forward(segs, k, logits);
    t.push_back(1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(t);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, rounds = 3, steps = 16;
  ModelConfig c;
  c.vocab = 256, c.layers = 4, c.dim = 256, c.heads = 4, c.experts = 8, c.expert_hidden = 1024, c.seq_len = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--threads") threads = v;
    else if (a == "--rounds") rounds = v;
    else if (a == "--steps") steps = v;
    else if (a == "--layers") c.layers = v;
    else if (a == "--dim") c.dim = v;
    else if (a == "--heads") c.heads = v;
    else if (a == "--experts") c.experts = v;
    else if (a == "--hidden") c.expert_hidden = v;
    else {
      std::fprintf(stderr, "step_cost: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  omp_set_num_threads(threads);
  LocalDispatcher disp(c.experts);
  LM lm(c, disp);
  lm.init(5);
  const std::vector<int> Bs = {1, 2, 4, 8, 16};
  std::vector<int> Ks;
  for (int k = 1; k <= c.experts; k *= 2) Ks.push_back(k);
  KVDecoder dec(lm, Bs.back(), 4 + steps * rounds + 8);
  const size_t cells = Bs.size() * Ks.size();
  std::vector<std::vector<double>> ms(cells);
  for (int r = 0; r < rounds; ++r)
    for (size_t i = 0; i < cells; ++i) {
      const size_t cell = (i + size_t(r) * 3) % cells;
      ms[cell].push_back(step_ms(lm, dec, Bs[cell / Ks.size()], Ks[cell % Ks.size()], steps));
    }
  serve::StepCostModel fit(1.0);
  std::printf("decode step ms (median of %d rounds x %d steps), L=%d C=%d E=%d H=%d, %d thread%s\n", rounds, steps,
              c.layers, c.dim, c.experts, c.expert_hidden, threads, threads == 1 ? "" : "s");
  std::printf("| B \\ K |");
  for (int k : Ks) std::printf(" %d |", k);
  std::printf("\n|---|");
  for (size_t i = 0; i < Ks.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (size_t b = 0; b < Bs.size(); ++b) {
    std::printf("| %d |", Bs[b]);
    for (size_t k = 0; k < Ks.size(); ++k) {
      const double m = median(ms[b * Ks.size() + k]);
      std::printf(" %.2f |", m);
      fit.add(double(Bs[b]) * Ks[k], serve::expected_experts(c.experts, std::vector<double>(size_t(Bs[b]), Ks[k])), m);
    }
    std::printf("\n");
  }
  const auto th = fit.coefficients();
  double worst = 0;
  for (size_t b = 0; b < Bs.size(); ++b)
    for (size_t k = 0; k < Ks.size(); ++k) {
      const double m = median(ms[b * Ks.size() + k]);
      const double p = fit.predict(double(Bs[b]) * Ks[k], serve::expected_experts(c.experts, std::vector<double>(size_t(Bs[b]), Ks[k])));
      worst = std::max(worst, std::fabs(p - m));
    }
  std::printf("fit: step_ms = %.3f + %.4f*R + %.3f*U (R = B*K rows, U = experts read per layer); worst error "
              "over the grid %.2f ms\n", th[0], th[1], th[2], worst);
  return 0;
}
