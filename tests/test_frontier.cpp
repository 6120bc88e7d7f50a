// `anyk eval --frontier` through the binary on a small trained run, against independent
// references: each uniform-K point's bits/byte equals `anyk eval --k K` on the same windows, each
// budget point's equals `anyk eval --layer-k` of the schedule it reports, and that schedule's
// average K is the budget it names; FLOPs per token are 2 x the weights one token multiplies
// at that K, counted here from the loaded model's parameter shapes (norm gains excluded, expert
// tensors scaled by K/E) and from the config by hand; every point has a positive measured speed.
// No assertion depends on wall-clock values.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/weights.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace anyk;
using anyk::test::Json;
using anyk::test::number;

namespace {

struct Run {
  anyk::test::TempDir tmp{"test_frontier"};
  fs::path dir = tmp.path;
  anyk::test::RunResult last;
  Run() {
    std::ofstream o(dir / "t.txt");
    for (int i = 0; i < 600; ++i) o << "line " << i % 41 << " of a tiny corpus, item " << i << ". ";
  }
  int sh(const std::string& args) {
    last = anyk::test::run_anyk(args, {.cwd = dir});
    return last.rc;
  }
};

// The objects of a `{"frontier": [...]}` or `{"results": [...]}` file.
std::vector<Json> objects(const fs::path& file, const std::string& list) {
  const Json j = anyk::test::read_json(file);
  REQUIRE_MESSAGE(j.contains(list), list << " missing in " << file);
  return j.at(list).get<std::vector<Json>>();
}

std::string text(const Json& obj, const std::string& key) { return obj.at(key).get<std::string>(); }

std::vector<int> ints(const Json& obj, const std::string& key) { return obj.at(key).get<std::vector<int>>(); }

std::string join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

// The model of the test run (the flags given to `anyk train` below).
constexpr int kL = 4, kC = 32, kE = 4, kH = 24, kT = 32, kV = 256;

}  // namespace

TEST_CASE("eval --frontier: bits/byte, FLOPs/token, budgets and speeds against independent references") {
  Run r;
  REQUIRE(r.sh("prepare --input t.txt --out data --val-fraction 0.2") == 0);
  REQUIRE_MESSAGE(r.sh("train --data data --run-dir run --steps 30 --layers " + std::to_string(kL) + " --dim " +
                       std::to_string(kC) + " --heads 2 --experts " + std::to_string(kE) + " --expert-hidden " +
                       std::to_string(kH) + " --seq-len " + std::to_string(kT) +
                       " --batch 8 --k-strategy layer --k-min 1 --k-max 4 --eval-every 0 --eval-windows 8 "
                       "--threads 1") == 0,
                  r.last.err);
  const std::string ev = "eval --run-dir run --data data --eval-windows 8 --threads 1 ";
  REQUIRE_MESSAGE(r.sh(ev + "--frontier --frontier-budgets 1,1.5,2.5,3.5,4 --gen-tokens 6 --json f.json") == 0,
                  r.last.err);
  const std::string table = r.last.out;
  const auto pts = objects(r.dir / "f.json", "frontier");
  // K = 1..E, then the budgets strictly inside (1, E): 1 and 4 are the uniform points already.
  REQUIRE(pts.size() == size_t(kE) + 3);

  // The independent references: `eval --k 1..E` on the same windows.
  REQUIRE(r.sh(ev + "--k 1,2,3,4 --json k.json") == 0);
  const auto ref = objects(r.dir / "k.json", "results");
  REQUIRE(ref.size() == size_t(kE));

  // Weights one token multiplies, from the model's declared parameters: every matrix of the dense
  // region (the embedding, used again as the tied output head; attention; router) and K/E of the
  // expert tensors; norm gains (vectors) are not multiply-adds.
  const ModelConfig mc = io::weights_config((r.dir / "run" / "model.h5").string());
  REQUIRE(mc.layers == kL);
  REQUIRE(mc.dim == kC);
  REQUIRE(mc.experts == kE);
  REQUIRE(mc.expert_hidden == kH);
  REQUIRE(mc.vocab == kV);
  LocalDispatcher disp(mc.experts);
  LM lm(mc, disp);
  io::load_weights((r.dir / "run" / "model.h5").string(), lm);  // the shapes are the file's
  double dense = 0, expert = 0;
  for (const auto& p : lm.params().infos()) {
    if (p.shape.ndim < 2) continue;
    (p.region == Region::Expert ? expert : dense) += double(p.shape.numel());
  }
  auto active = [&](double mean_k) { return dense + expert * mean_k / kE; };
  // The same count by hand from the config: V*C + per layer QKV 3C^2, output C^2, router E*C,
  // and per active expert w1, w3 (H x C each) and w2 (C x H).
  for (double k : {1.0, 2.5, 4.0}) {
    const double by_hand = double(kV) * kC + kL * (4.0 * kC * kC + kE * kC + k * 3.0 * kH * kC);
    CHECK(active(k) == by_hand);
  }

  for (int k = 1; k <= kE; ++k) {
    const Json& p = pts[size_t(k - 1)];
    CAPTURE(p.dump());
    CHECK(text(p, "kind") == "K");
    CHECK(ints(p, "k") == std::vector<int>(size_t(kL), k));
    const Json& q = ref[size_t(k - 1)];
    REQUIRE(ints(q, "k") == std::vector<int>(size_t(kL), k));
    CHECK(number(p, "bits_per_byte") == number(q, "bits_per_byte"));  // same windows, same sums
    CHECK(number(p, "val_loss") == number(q, "val_loss"));
    CHECK(number(p, "bits_per_byte") == doctest::Approx(number(p, "val_loss") / std::log(2.0)).epsilon(1e-12));
    CHECK(number(p, "mean_k") == k);
    CHECK(number(p, "active_params") == doctest::Approx(active(k)).epsilon(1e-12));
    CHECK(number(p, "flops_per_token") == doctest::Approx(2 * active(k)).epsilon(1e-12));
    // The row of the printed table names the setting.
    CHECK(table.find(text(p, "name") + " ") != std::string::npos);
  }
  // More experts cost strictly more FLOPs.
  for (int k = 2; k <= kE; ++k)
    CHECK(number(pts[size_t(k - 1)], "flops_per_token") > number(pts[size_t(k - 2)], "flops_per_token"));

  const double budgets[] = {1.5, 2.5, 3.5};
  for (int i = 0; i < 3; ++i) {
    const Json& p = pts[size_t(kE + i)];
    CAPTURE(p.dump());
    CHECK(text(p, "kind") == "budget");
    const auto ks = ints(p, "k");
    REQUIRE(ks.size() == size_t(kL));
    int sum = 0;
    for (int k : ks) {
      CHECK(k >= 1);
      CHECK(k <= kE);
      sum += k;
    }
    CHECK(double(sum) / kL == budgets[i]);  // budget x L is a whole number of experts here
    CHECK(number(p, "mean_k") == budgets[i]);
    CHECK(text(p, "name").rfind("budget " + std::to_string(budgets[i]).substr(0, 3) + " ", 0) == 0);
    CHECK(number(p, "active_params") == doctest::Approx(active(budgets[i])).epsilon(1e-12));
    CHECK(number(p, "flops_per_token") == doctest::Approx(2 * active(budgets[i])).epsilon(1e-12));
    // The schedule it reports, evaluated on its own, gives its bits/byte.
    REQUIRE(r.sh(ev + "--layer-k " + join(ks) + " --json l.json") == 0);
    const auto lk = objects(r.dir / "l.json", "results");
    REQUIRE(lk.size() == 1);
    CHECK(number(p, "bits_per_byte") == number(lk[0], "bits_per_byte"));
    // And it is the greedy schedule `eval --budget` picks.
    REQUIRE(r.sh(ev + "--budget " + std::to_string(budgets[i]).substr(0, 3) + " --json b.json") == 0);
    const auto bj = objects(r.dir / "b.json", "results");
    REQUIRE(bj.size() == 2);
    CHECK(ints(bj[0], "k") == ks);
    CHECK(number(bj[0], "bits_per_byte") == number(p, "bits_per_byte"));
  }

  // Every point has a measured, positive speed (its value is not asserted: wall clock).
  for (const auto& p : pts) {
    CAPTURE(p.dump());
    const double d = number(p, "decode_tokens_per_s"), pr = number(p, "prompt_tokens_per_s");
    CHECK(std::isfinite(d));
    CHECK(d > 0);
    CHECK(std::isfinite(pr));
    CHECK(pr > 0);
  }

  // Bad budgets and a stray --plot are one-line refusals.
  CHECK(r.sh(ev + "--frontier --frontier-budgets 0.5") == 2);
  CHECK(r.last.err.find("--frontier-budgets value 0.5 is outside [1, experts=4]") != std::string::npos);
  CHECK(r.sh(ev + "--frontier --frontier-budgets 1.5,x") == 2);
  CHECK(r.last.err.find("'x' is not a number") != std::string::npos);
}
