// The elastic-inference tools through the binary on a small trained run: --budget meets the
// average-K budget exactly and never ends worse than where it started, next to an even schedule
// of the same cost; --analyze's loads are shares, its co-activation matrix is symmetric, and the
// first layer's ranking is identical at every K (its router input does not depend on K);
// --sweep --csv writes one line per K with the same numbers as --json.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "eval/analysis.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using anyk::test::slurp;

// All numbers following `"key": [` up to the matching close of that array (flattened).
std::vector<double> numbers_after(const std::string& s, const std::string& key) {
  std::vector<double> v;
  size_t p = s.find("\"" + key + "\": ");
  REQUIRE(p != std::string::npos);
  p = s.find('[', p);
  int depth = 0;
  for (size_t i = p; i < s.size(); ++i) {
    char c = s[i];
    if (c == '[') ++depth;
    else if (c == ']') {
      if (--depth == 0) break;
    } else if ((c >= '0' && c <= '9') || c == '-') {
      size_t used = 0;
      v.push_back(std::stod(s.substr(i), &used));
      i += used - 1;
    }
  }
  return v;
}

struct Run {
  fs::path dir;
  Run() {
    dir = fs::temp_directory_path() / ("anyk_test_eval_tools_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream o(dir / "t.txt");
    for (int i = 0; i < 600; ++i) o << "sample " << i % 37 << " of a small corpus, line " << i << ". ";
  }
  ~Run() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  int sh(const std::string& args) {
    const char* bin = std::getenv("ANYK_BIN");
    REQUIRE(bin);
    std::string cmd = "cd " + dir.string() + " && timeout 300 " + bin + " " + args + " > out.txt 2> err.txt";
    int rc = std::system(cmd.c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
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
  std::string b = slurp(r.dir / "budget.json");
  std::string out = slurp(r.dir / "out.txt");
  auto ks = numbers_after(b, "k");  // greedy schedule (first result)
  REQUIRE(ks.size() == 3);
  CHECK(ks[0] + ks[1] + ks[2] == 7);
  size_t even = b.find("even K=");
  REQUIRE(even != std::string::npos);
  auto ks_even = numbers_after(b.substr(even), "k");
  CHECK(ks_even[0] + ks_even[1] + ks_even[2] == 7);
  // The greedy loss is at most the K=1 start (each step takes the best increment).
  double start = std::stod(out.substr(out.find("start K=1 ") + 10));
  double greedy = std::stod(b.substr(b.find("\"bits_per_byte\": ") + 17));
  CHECK(greedy <= start + 1e-9);

  REQUIRE(r.sh(ev + "--analyze --k 2 --json an.json") == 0);
  std::string a = slurp(r.dir / "an.json");
  auto load = numbers_after(a, "load");
  REQUIRE(load.size() == 3 * 4);
  for (int l = 0; l < 3; ++l) {
    double s = 0;
    for (int e = 0; e < 4; ++e) s += load[l * 4 + e];
    CHECK(s == doctest::Approx(1.0));
  }
  auto co = numbers_after(a, "coactivation");
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
  double tokens = std::stod(a.substr(a.find("\"tokens\": ") + 10));
  CHECK(pairs == tokens);
  // Sharpness: 1/E <= top-1 <= top-K mass <= 1, entropy in [0, log2 E], and the mean entropy is at
  // least -log2 of the mean top-1 (H >= -log2 max p per token, then Jensen).
  auto sharp = numbers_after(a, "sharpness");
  REQUIRE(sharp.size() == 3 * 3);
  for (int l = 0; l < 3; ++l) {
    const double top1 = sharp[l * 3], mass = sharp[l * 3 + 1], h = sharp[l * 3 + 2];
    CHECK(top1 >= 0.25 - 1e-6);
    CHECK(top1 <= mass + 1e-9);
    CHECK(mass <= 1.0 + 1e-6);
    CHECK(h >= -std::log2(top1) - 1e-6);
    CHECK(h <= 2.0 + 1e-6);
  }
  std::string sp = a.substr(a.find("\"spearman\""));
  for (size_t p = sp.find("\"per_layer\": ["); p != std::string::npos; p = sp.find("\"per_layer\": [", p + 1)) {
    auto v = numbers_after(sp.substr(p), "per_layer");
    REQUIRE(v.size() == 3);
    CHECK(v[0] == doctest::Approx(1.0));  // layer 0 sees the same input at every K
    for (double x : v) CHECK(x <= 1.0 + 1e-12);
  }

  REQUIRE(r.sh(ev + "--sweep --json s.json --csv s.csv") == 0);
  std::string csv = slurp(r.dir / "s.csv"), js = slurp(r.dir / "s.json");
  int lines = 0;
  for (char c : csv) lines += c == '\n';
  CHECK(lines == 1 + 4);
  CHECK(csv.find("\"K=3\",3;3;3,") != std::string::npos);
  // A bad combination is refused in one line.
  CHECK(r.sh(ev + "--budget 9") == 2);
  CHECK(slurp(r.dir / "err.txt").find("--budget 9") != std::string::npos);
  CHECK(r.sh(ev + "--k 2 --plot p.png") == 2);
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
