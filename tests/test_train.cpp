// End to end through the `anyk` binary: a tiny MoE model memorises a repeating text (loss near
// zero), `anyk eval` reproduces the training-time K-sweep from the saved weights, and the same
// seed gives the same loss sequence.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using anyk::test::Json;
using anyk::test::slurp;

// One prepared corpus and one trained run shared by the test cases of this file.
struct Fixture {
  anyk::test::TempDir tmp{"test_train"};
  fs::path dir = tmp.path, data, run;
  int train_rc = -1;
  std::string train_err;

  Fixture() {
    {
      std::ofstream o(dir / "fox.txt");
      for (int i = 0; i < 900; ++i) o << "the quick brown fox jumps over the lazy dog. ";  // ~40 KB
    }
    data = dir / "data";
    run = dir / "run";
    REQUIRE(sh("prepare --input " + (dir / "fox.txt").string() + " --out " + data.string()) == 0);
    train_rc = sh("train --data " + data.string() + " --run-dir " + run.string() + " " + kModel +
                      " --steps 300 --lr 0.01 --warmup 20 --log-every 10 --eval-every 150 --threads 1",
                  &train_err);
  }
  static inline const std::string kModel =
      "--layers 2 --dim 32 --heads 4 --experts 4 --expert-hidden 32 --seq-len 32 --batch 8 "
      "--k-strategy layer --k-min 1 --k-max 4 --seed 7";

  // anyk with args (absolute paths) in dir; the exit status, stderr in *err.
  int sh(const std::string& args, std::string* err = nullptr) const {
    const anyk::test::RunResult r = anyk::test::run_anyk(args, {.cwd = dir, .timeout_s = 600});
    if (err) *err = r.err;
    return r.rc;
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

// Every value of key in the records of metrics.jsonl whose "type" is type, in order.
std::vector<double> metric(const fs::path& run_dir, const std::string& type, const std::string& key) {
  return anyk::test::numbers(anyk::test::read_jsonl(run_dir / "metrics.jsonl", type), key);
}

// The val_loss of the result named `name` in a results JSON (sweep.json or eval --json).
double val_loss_of(const fs::path& json, const std::string& name) {
  const Json j = anyk::test::read_json(json);
  for (const Json& r : j.at("results"))
    if (r.at("name") == name) return anyk::test::number(r, "val_loss");
  FAIL("no result " << name << " in " << j.dump());
  return 0;
}

}  // namespace

TEST_CASE("train: a tiny MoE memorises a repeating text") {
  Fixture& f = fixture();
  REQUIRE_MESSAGE(f.train_rc == 0, f.train_err);
  for (const char* file : {"config.ini", "train.log", "metrics.jsonl", "model.h5", "sweep.json"})
    CHECK_MESSAGE(fs::exists(f.run / file), file);
  std::vector<double> loss = metric(f.run, "train", "loss");
  REQUIRE(loss.size() == 31);  // step 1 and every 10th step
  INFO("first loss " << loss.front() << ", last loss " << loss.back());
  CHECK(loss.front() > 5.0);  // ~ln 256 at initialisation
  CHECK(loss.back() < 0.1);
  double tail = 0;
  for (size_t i = loss.size() - 5; i < loss.size(); ++i) tail += loss[i] / 5;
  CHECK(tail < 0.1);
  CHECK(loss.back() < 0.02 * loss.front());
  // The K schedule stays in range and the logged fields are there.
  for (double k : metric(f.run, "train", "mean_k")) {
    CHECK(k >= 1.0);
    CHECK(k <= 4.0);
  }
  CHECK(metric(f.run, "eval", "val_loss").size() == 2);  // K=1 and K=4 at step 150
  CHECK(metric(f.run, "train", "mfu").size() == 31);
  // Validation on the same repeating text is near zero at every K in the trained range.
  for (const char* k : {"K=1", "K=2", "K=3", "K=4"}) CHECK(val_loss_of(f.run / "sweep.json", k) < 0.2);
}

TEST_CASE("train: anyk eval reproduces the training-time sweep from model.h5") {
  Fixture& f = fixture();
  REQUIRE_MESSAGE(f.train_rc == 0, f.train_err);
  const fs::path json = f.dir / "eval.json";
  std::string err;
  int rc = f.sh("eval --run-dir " + f.run.string() + " --data " + f.data.string() + " --k 2 --json " + json.string() +
                    " --threads 1",
                &err);
  REQUIRE_MESSAGE(rc == 0, err);
  const double at_eval = val_loss_of(json, "K=2");
  const double at_train = val_loss_of(f.run / "sweep.json", "K=2");
  INFO("eval " << at_eval << " vs training-time sweep " << at_train);
  CHECK(std::abs(at_eval - at_train) <= 1e-5 * std::abs(at_train));

  // A per-layer schedule runs too and differs from nothing in shape.
  rc = f.sh("eval --run-dir " + f.run.string() + " --data " + f.data.string() + " --layer-k 4,1 --json " +
                json.string() + " --threads 1",
            &err);
  REQUIRE_MESSAGE(rc == 0, err);
  CHECK(std::isfinite(val_loss_of(json, "K=4,1")));
}

TEST_CASE("train: the same seed gives the same loss sequence") {
  Fixture& f = fixture();
  std::vector<std::vector<double>> runs;
  for (int i = 0; i < 2; ++i) {
    const fs::path r = f.dir / ("det" + std::to_string(i));
    std::string err;
    int rc = f.sh("train --data " + f.data.string() + " --run-dir " + r.string() + " " + Fixture::kModel +
                      " --steps 12 --grad-accum 2 --log-every 1 --eval-every 0 --eval-windows 4 --threads 2",
                  &err);
    REQUIRE_MESSAGE(rc == 0, err);
    runs.push_back(metric(r, "train", "loss"));
  }
  REQUIRE(runs[0].size() == 12);
  CHECK(runs[0] == runs[1]);
}

TEST_CASE("train: top_p with p <= 1/E gives every token --k-min experts, and says so") {
  // The largest of E probabilities is at least 1/E, so p = 1/E is reached by the top expert alone.
  Fixture& f = fixture();
  const std::string model =
      "--layers 2 --dim 32 --heads 4 --experts 4 --expert-hidden 32 --seq-len 32 --batch 8 --seed 7 "
      "--k-strategy top_p --k-min 1 --k-max 4 --steps 8 --log-every 1 --eval-every 0 --eval-windows 4 --threads 1";
  for (double p : {0.2, 0.9}) {
    const fs::path r = f.dir / ("topp" + std::to_string(int(p * 100)));
    std::string err;
    int rc = f.sh("train --data " + f.data.string() + " --run-dir " + r.string() + " " + model + " --expert-top-p " +
                      std::to_string(p),
                  &err);
    REQUIRE_MESSAGE(rc == 0, err);
    const std::vector<double> k = metric(r, "train", "mean_k");
    REQUIRE(k.size() == 8);
    const bool warned = slurp(r / "train.log").find("anyk: warning: --expert-top-p") != std::string::npos;
    if (p < 0.25) {
      CHECK(warned);
      for (double v : k) CHECK(v == 1.0);
    } else {
      CHECK_FALSE(warned);
      CHECK(*std::max_element(k.begin(), k.end()) > 1.5);  // an untrained router is near uniform
    }
  }
}
