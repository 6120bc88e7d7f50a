// --recompute end to end through the anyk binary: under mpirun -np 2 --ep 2, and on one rank with
// --device checked, `--recompute layer` trains the same run as `--recompute none` (the same loss
// and gradient norm at every step, the same final K-sweep, which reads every weight) with a lower
// arena high-water mark; a bad value is one error line naming both modes.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace fs = std::filesystem;

namespace {

struct Runs {
  anyk::test::TempDir tmp{"test_recompute_cli"};
  fs::path dir = tmp.path;
  Runs() {
    {
      std::ofstream o(dir / "text.txt");
      for (int i = 0; i < 2000; ++i) o << "token " << (i * 7919) % 613 << " goes to expert " << i % 4 << ". ";
    }
    const anyk::test::RunResult r = anyk::test::run_anyk(
        "prepare --input " + (dir / "text.txt").string() + " --out " + (dir / "data").string(), {.cwd = dir});
    REQUIRE_MESSAGE(r.rc == 0, r.err);
  }
  // Trains into dir/name on np ranks (0: no mpirun); returns the exit status, stderr in *err.
  int train(int np, const std::string& name, const std::string& extra, std::string* err) const {
    const std::string args = "train --data " + (dir / "data").string() + " --run-dir " + (dir / name).string() +
                             " --layers 4 --dim 32 --heads 4 --experts 4 --expert-hidden 32 --seq-len 32 --batch 4 "
                             "--k-strategy layer --k-min 1 --k-max 4 --steps 4 --log-every 1 --eval-every 0 "
                             "--eval-windows 2 --threads 1 --seed 5 " + extra;
    const anyk::test::RunResult r = anyk::test::run_anyk(args, {.np = np, .cwd = dir, .timeout_s = 240});
    *err = r.err;
    return r.rc;
  }
  std::vector<double> metric(const std::string& name, const std::string& type, const std::string& key) const {
    return anyk::test::numbers(anyk::test::read_jsonl(dir / name / "metrics.jsonl", type), key);
  }
  // The plain run and the recompute run are the same run, with a smaller arena.
  void check_same_run(const std::string& plain, const std::string& rec) const {
    const std::vector<double> loss = metric(plain, "train", "loss");
    REQUIRE(loss.size() == 4);
    CHECK(loss == metric(rec, "train", "loss"));
    CHECK(metric(plain, "train", "grad_norm") == metric(rec, "train", "grad_norm"));
    const std::vector<double> sweep = metric(plain, "sweep", "val_loss");
    REQUIRE(sweep.size() == 4);  // K = 1..4, on the final weights
    CHECK(sweep == metric(rec, "sweep", "val_loss"));
    const std::vector<double> a = metric(plain, "train", "arena_mb"), b = metric(rec, "train", "arena_mb");
    CHECK(b.back() < a.back());
    CHECK(anyk::test::slurp(dir / rec / "train.log").find("recompute: layer") != std::string::npos);
  }
};

}  // namespace

TEST_CASE("recompute: mpirun -np 2 --ep 2: --recompute layer trains the same run as none") {
  Runs r;
  std::string err;
  REQUIRE_MESSAGE(r.train(2, "none", "--ep 2 --recompute none", &err) == 0, err);
  REQUIRE_MESSAGE(r.train(2, "layer", "--ep 2 --recompute layer", &err) == 0, err);
  r.check_same_run("none", "layer");
}

TEST_CASE("recompute: --device checked --recompute layer trains the CPU's plain run") {
  Runs r;
  std::string err;
  REQUIRE_MESSAGE(r.train(0, "cpu", "--recompute none", &err) == 0, err);
  REQUIRE_MESSAGE(r.train(0, "chk", "--device checked --recompute layer", &err) == 0, err);
  r.check_same_run("cpu", "chk");
}

TEST_CASE("recompute: a bad --recompute value is one error line naming both modes, and no run") {
  Runs r;
  std::string err;
  CHECK(r.train(0, "bad", "--recompute full", &err) != 0);
  anyk::test::check_one_error_line(err, {"--recompute 'full'", "none", "layer"});
  CHECK(!fs::exists(r.dir / "bad"));
}
