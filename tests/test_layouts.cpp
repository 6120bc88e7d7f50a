// Expert parallelism end to end through `mpiexec anyk train`: the same seed and global batch give
// the same loss sequence (relative 1e-5 per step, 10 steps, `layer` strategy) and the same final
// weights on np=1; np=2 ep=2; np=4 ep=4; np=4 ep=2 (edp=2); the same layout twice is
// bit-identical; a rank that fails mid-run brings the job down with its message, never a hang.
#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/weights.h"
#include "model/lm.h"

#include "test_util.h"

namespace fs = std::filesystem;
using namespace anyk;

namespace {

using anyk::test::slurp;

struct Runner {
  anyk::test::TempDir tmp{"test_layouts"};
  fs::path dir = tmp.path;
  Runner() {
    std::ofstream o(dir / "text.txt");
    for (int i = 0; i < 400; ++i) o << "line " << i << ": experts learn a coarse-to-fine ranking. ";
  }
  // Runs the anyk binary (under mpiexec when np > 0) in dir with a hard timeout (a hang fails the
  // test); returns the exit code.
  int run(int np, const std::string& args, std::string* err = nullptr, const std::string& env = "") {
    anyk::test::RunOptions o{.np = np, .cwd = dir, .timeout_s = 120};
    if (!env.empty()) o.env = {env};
    const auto r = anyk::test::run_anyk(args, o);
    if (err) *err = r.err;
    return r.rc;
  }
  // The losses of the "train" records of run_dir/metrics.jsonl, in order.
  std::vector<double> losses(const std::string& run_dir) {
    return anyk::test::numbers(anyk::test::read_jsonl(dir / run_dir / "metrics.jsonl", "train"), "loss");
  }
};

const std::string kModel =
    "--steps 10 --layers 2 --dim 32 --heads 2 --experts 4 --expert-hidden 32 --seq-len 32 --batch 2 "
    "--k-strategy layer --k-min 1 --k-max 4 --log-every 1 --eval-every 0 --eval-windows 4 --threads 1 --seed 3";

ModelConfig small_config() {
  ModelConfig c;
  c.layers = 2;
  c.dim = 32;
  c.heads = 2;
  c.experts = 4;
  c.expert_hidden = 32;
  c.seq_len = 32;
  return c;
}

}  // namespace

TEST_CASE("layouts give the same losses and weights; a layout twice is bit-identical") {
  Runner r;
  std::string err;
  REQUIRE(r.run(0, "prepare --input text.txt --out data --val-fraction 0.2", &err) == 0);
  struct Layout {
    int np, ep, accum;
    std::string name;
  };
  // The global batch is 4 sequences of 32 tokens in every layout.
  std::vector<Layout> layouts = {{1, 1, 4, "np1"}, {2, 2, 2, "np2_ep2"}, {4, 4, 1, "np4_ep4"}, {4, 2, 1, "np4_ep2"}};
  for (auto& l : layouts) {
    CAPTURE(l.name);
    std::string args = "train --data data --run-dir " + l.name + " " + kModel + " --ep " + std::to_string(l.ep) +
                       " --grad-accum " + std::to_string(l.accum);
    REQUIRE_MESSAGE(r.run(l.np, args, &err) == 0, err);
  }
  auto ref = r.losses("np1");
  REQUIRE(ref.size() == 10);
  CHECK(ref.back() < ref.front());  // it trains
  LocalDispatcher d(4);
  LM want(small_config(), d);
  io::load_weights((r.dir / "np1" / "model.h5").string(), want);
  for (auto& l : layouts) {
    CAPTURE(l.name);
    auto got = r.losses(l.name);
    REQUIRE(got.size() == ref.size());
    for (size_t i = 0; i < ref.size(); ++i) CHECK(std::abs(got[i] - ref[i]) <= 1e-5 * std::abs(ref[i]));
    LM have(small_config(), d);
    io::load_weights((r.dir / l.name / "model.h5").string(), have);
    for (Region reg : {Region::Dense, Region::Expert}) {
      const float* a = static_cast<const float*>(want.params().region_data(reg));
      const float* b = static_cast<const float*>(have.params().region_data(reg));
      double num = 0, den = 0;
      for (int64_t i = 0; i < want.params().region_numel(reg); ++i) {
        num = std::max(num, double(std::abs(a[i] - b[i])));
        den = std::max(den, double(std::abs(a[i])));
      }
      CHECK(num <= 1e-5 * den);
    }
  }
  // Determinism: the same layout and seed twice give bit-identical loss sequences.
  REQUIRE(r.run(2, "train --data data --run-dir again " + kModel + " --ep 2 --grad-accum 2", &err) == 0);
  // (The loss fields only: timings differ.)
  const auto a = r.losses("np2_ep2"), b = r.losses("again");
  CHECK(a == b);
  CHECK(!a.empty());
}

TEST_CASE("a failing rank brings the whole job down with its message, within seconds") {
  Runner r;
  std::string err;
  REQUIRE(r.run(0, "prepare --input text.txt --out data --val-fraction 0.2", &err) == 0);
  auto t0 = std::chrono::steady_clock::now();
  int rc = r.run(2, "train --data data --run-dir run " + kModel + " --ep 2", &err,
                 "ANYK_FAULT_INJECT=1:3");
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(rc != 0);  // the job ended by itself (a hang fails the run's timeout)
  CHECK(secs < 60);
  CHECK(err.find("injected fault on rank 1 at step 3") != std::string::npos);
  // A layout that does not divide is refused before any work, on every rank.
  rc = r.run(2, "train --data data --run-dir bad " + kModel + " --ep 3", &err);
  CHECK(rc != 0);
  CHECK(err.find("--ep 3") != std::string::npos);
  CHECK(!fs::exists(r.dir / "bad"));
}

TEST_CASE("SIGUSR1 under mpirun: every rank stops at the same step, checkpoints, and resumes exactly") {
  Runner r;
  std::string err;
  REQUIRE(r.run(0, "prepare --input text.txt --out data --val-fraction 0.2", &err) == 0);
  const std::string args =
      "train --data data --layers 2 --dim 32 --heads 2 --experts 4 --expert-hidden 32 --seq-len 32 --batch 8 "
      "--k-strategy layer --k-min 1 --k-max 4 --log-every 1 --eval-every 0 --eval-windows 4 --threads 1 --seed 3 "
      "--ep 2 --steps 600";
  // Uninterrupted reference.
  REQUIRE(r.run(2, args + " --run-dir ref", &err) == 0);
  // Interrupted run: signal mpirun (which forwards SIGUSR1 to the ranks) once step 20 is logged,
  // wait for a clean exit, then resume to the end.
  anyk::test::Process p(anyk::test::anyk_argv(args + " --run-dir cut"), {.np = 2, .cwd = r.dir});
  auto at_step_20 = [&] {
    for (const auto& rec : anyk::test::read_jsonl(r.dir / "cut" / "metrics.jsonl", "train", true))
      if (anyk::test::number(rec, "step") >= 20) return true;
    return false;
  };
  REQUIRE_MESSAGE(anyk::test::wait_until(120, at_step_20), p.err());
  p.signal(SIGUSR1);
  REQUIRE_MESSAGE(p.wait_for(120), p.command() << " did not end within 120 s of SIGUSR1");
  const auto res = p.result();
  CHECK(res.rc == 0);
  CHECK(res.out.find("caught SIGUSR1 at step") != std::string::npos);
  auto cut = r.losses("cut");
  REQUIRE(cut.size() >= 20);
  REQUIRE(cut.size() < 600);  // it stopped early
  REQUIRE(r.run(2, args + " --run-dir cut --resume latest", &err) == 0);
  auto whole = r.losses("cut"), ref = r.losses("ref");
  REQUIRE(whole.size() == ref.size());
  for (size_t i = 0; i < ref.size(); ++i) CHECK(whole[i] == ref[i]);  // bit-identical continuation
}
