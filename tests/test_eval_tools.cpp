// The elastic-inference tools through the binary on a small trained run: --budget meets the
// average-K budget exactly and never ends worse than where it started, next to an even schedule
// of the same cost; --analyze's loads are shares, its co-activation matrix is symmetric, and the
// first layer's ranking is identical at every K (its router input does not depend on K);
// --sweep --csv writes one line per K with the same numbers as --json.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "eval/analysis.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using anyk::test::Json;
using anyk::test::number;
using anyk::test::slurp;

// Every number in j (arrays and objects flattened, in order).
std::vector<double> flat(const Json& j) {
  std::vector<double> v;
  if (j.is_number()) v.push_back(j.get<double>());
  for (const Json& x : j.is_structured() ? j : Json::array()) {
    auto sub = flat(x);
    v.insert(v.end(), sub.begin(), sub.end());
  }
  return v;
}

struct Run {
  anyk::test::TempDir tmp{"test_eval_tools"};
  fs::path dir = tmp.path;
  anyk::test::RunResult last;
  Run() {
    std::ofstream o(dir / "t.txt");
    for (int i = 0; i < 600; ++i) o << "sample " << i % 37 << " of a small corpus, line " << i << ". ";
  }
  int sh(const std::string& args) {
    last = anyk::test::run_anyk(args, {.cwd = dir});
    return last.rc;
  }
};

}  // namespace

TEST_CASE("eval tools: --budget, --analyze, --sweep --csv") {
  Run r;
  REQUIRE(r.sh("prepare --input t.txt --out data --val-fraction 0.2") == 0);
  REQUIRE(r.sh("train --data data --run-dir run --steps 60 --layers 3 --dim 32 --heads 2 --experts 4 "
               "--expert-hidden 32 --seq-len 32 --batch 8 --k-strategy layer --k-min 1 --k-max 4 "
               "--eval-every 0 --eval-windows 8 --threads 1") == 0);
  const std::string ev = "eval --run-dir run --data data --eval-windows 8 ";

  REQUIRE(r.sh(ev + "--budget 2.34 --json budget.json") == 0);  // round(2.34 * 3) = 7 experts
  const Json b = anyk::test::read_json(r.dir / "budget.json").at("results");
  std::string out = r.last.out;
  REQUIRE(b.size() == 2);
  auto ks = b[0].at("k").get<std::vector<int>>();  // greedy schedule (first result)
  REQUIRE(ks.size() == 3);
  CHECK(ks[0] + ks[1] + ks[2] == 7);
  REQUIRE(b[1].at("name").get<std::string>().rfind("even K=", 0) == 0);
  auto ks_even = b[1].at("k").get<std::vector<int>>();
  REQUIRE(ks_even.size() == 3);
  CHECK(ks_even[0] + ks_even[1] + ks_even[2] == 7);
  // The greedy loss is at most the K=1 start (each step takes the best increment).
  REQUIRE(out.find("start K=1 ") != std::string::npos);
  double start = std::stod(out.substr(out.find("start K=1 ") + 10));
  double greedy = number(b[0], "bits_per_byte");
  CHECK(greedy <= start + 1e-9);

  REQUIRE(r.sh(ev + "--analyze --k 2 --json an.json") == 0);
  const Json a = anyk::test::read_json(r.dir / "an.json");
  CHECK(a.at("k") == 2);
  auto load = flat(a.at("load"));
  REQUIRE(load.size() == 3 * 4);
  for (int l = 0; l < 3; ++l) {
    double s = 0;
    for (int e = 0; e < 4; ++e) s += load[l * 4 + e];
    CHECK(s == doctest::Approx(1.0));
  }
  auto co = flat(a.at("coactivation"));
  REQUIRE(co.size() == 3 * 16);
  for (int l = 0; l < 3; ++l)
    for (int i = 0; i < 4; ++i) {
      CHECK(co[l * 16 + i * 4 + i] == 0);
      for (int j = 0; j < 4; ++j) CHECK(co[l * 16 + i * 4 + j] == co[l * 16 + j * 4 + i]);
    }
  // With K = 2 every token co-activates exactly one pair: the pair counts sum to the tokens.
  double pairs = 0;
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j) pairs += co[i * 4 + j];
  double tokens = number(a, "tokens");
  CHECK(pairs == tokens);
  // Sharpness: 1/E <= top-1 <= top-K mass <= 1, entropy in [0, log2 E], and the mean entropy is at
  // least -log2 of the mean top-1 (H >= -log2 max p per token, then Jensen).
  const Json& sharp = a.at("sharpness");
  REQUIRE(sharp.size() == 3);
  for (int l = 0; l < 3; ++l) {
    const double top1 = number(sharp[l], "max_prob"), mass = number(sharp[l], "topk_mass"),
                 h = number(sharp[l], "entropy_bits");
    CHECK(top1 >= 0.25 - 1e-6);
    CHECK(top1 <= mass + 1e-9);
    CHECK(mass <= 1.0 + 1e-6);
    CHECK(h >= -std::log2(top1) - 1e-6);
    CHECK(h <= 2.0 + 1e-6);
  }
  const Json& sp = a.at("spearman");
  REQUIRE(sp.size() == 3);  // K = 2..4 against K = 1
  for (size_t i = 0; i < sp.size(); ++i) {
    CHECK(sp[i].at("k") == int(i) + 2);
    auto v = flat(sp[i].at("per_layer"));
    REQUIRE(v.size() == 3);
    CHECK(v[0] == doctest::Approx(1.0));  // layer 0 sees the same input at every K
    for (double x : v) CHECK(x <= 1.0 + 1e-12);
  }

  REQUIRE(r.sh(ev + "--sweep --json s.json --csv s.csv") == 0);
  std::string csv = slurp(r.dir / "s.csv");
  const Json js = anyk::test::read_json(r.dir / "s.json").at("results");
  int lines = 0;
  for (char c : csv) lines += c == '\n';
  CHECK(lines == 1 + 4);
  CHECK(csv.find("\"K=3\",3;3;3,") != std::string::npos);
  REQUIRE(js.size() == 4);  // the same settings as the CSV's rows
  CHECK(js[2].at("name") == "K=3");
  // A bad combination is refused in one line.
  CHECK(r.sh(ev + "--budget 9") == 2);
  CHECK(anyk::test::error_of(r.last.err).find("--budget 9") != std::string::npos);
  CHECK(r.sh(ev + "--k 2 --plot p.png") == 2);

  // `generate --budget B` and `eval --budget B` choose the same per-layer schedule with their
  // default --eval-windows (one default for both), as the README says.
  REQUIRE(r.sh("eval --run-dir run --data data --budget 2.5 --json b25.json") == 0);
  const auto eval_k = anyk::test::read_json(r.dir / "b25.json").at("results")[0].at("k").get<std::vector<int>>();
  REQUIRE(r.sh("generate --run-dir run --data data --budget 2.5 --prompt sample --max-new 2") == 0);
  const std::string gen = r.last.err;
  const size_t at = gen.find("generate: K=");
  REQUIRE_MESSAGE(at != std::string::npos, gen);
  const std::string gen_k = gen.substr(at + 12, gen.find(' ', at + 12) - at - 12);
  std::string eval_text;
  for (size_t i = 0; i < eval_k.size(); ++i) {
    if (i) eval_text += ',';
    eval_text += std::to_string(eval_k[i]);
  }
  if (std::adjacent_find(eval_k.begin(), eval_k.end(), std::not_equal_to<>()) == eval_k.end())
    eval_text = std::to_string(eval_k[0]);  // a uniform schedule prints as K=k
  CHECK_MESSAGE(gen_k == eval_text, "generate chose K=" << gen_k << ", eval K=" << eval_text);
  CHECK(gen.find("(greedy schedule for budget 2.50)") != std::string::npos);
  // This small model picks one schedule over 8 to 64 windows, so check the defaults themselves too.
  const auto default_windows = [&](const std::string& cmd) {
    REQUIRE(r.sh(cmd + " --help") == 0);
    const size_t p = r.last.out.find("--eval-windows arg (=");
    REQUIRE_MESSAGE(p != std::string::npos, r.last.out);
    return std::stoi(r.last.out.substr(p + 21));
  };
  CHECK(default_windows("generate") == default_windows("eval"));
}

TEST_CASE("eval tools: router_sharpness against hand-derived values") {
  // Token 0 uniform over 4: top-1 1/4, top-2 mass 1/2, entropy 2 bits. Token 1 (0.5, 0.25, 0.25, 0)
  // in scrambled order: top-1 1/2, top-2 mass 3/4, entropy 0.5*1 + 2*0.25*2 = 1.5 bits.
  const std::vector<float> p = {0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.0f, 0.5f, 0.25f};
  const auto one = anyk::eval::router_sharpness(p.data(), 1, 4, 2);
  CHECK(one.max_prob == doctest::Approx(0.25));
  CHECK(one.topk_mass == doctest::Approx(0.5));
  CHECK(one.entropy_bits == doctest::Approx(2.0));
  const auto both = anyk::eval::router_sharpness(p.data(), 2, 4, 2);
  CHECK(both.max_prob == doctest::Approx((0.25 + 0.5) / 2));
  CHECK(both.topk_mass == doctest::Approx((0.5 + 0.75) / 2));
  CHECK(both.entropy_bits == doctest::Approx((2.0 + 1.5) / 2));
  const std::vector<float> hot = {0, 0, 1, 0};
  CHECK(anyk::eval::router_sharpness(hot.data(), 1, 4, 1).entropy_bits == 0.0);
  CHECK(anyk::eval::router_sharpness(hot.data(), 1, 4, 1).max_prob == 1.0);
}
