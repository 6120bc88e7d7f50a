// The `anyk` command line as a user meets it: bad input gives one `anyk: error:` line naming the
// offending option or value, a non-zero exit and no run directory; --help describes the commands.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using Result = anyk::test::RunResult;
using anyk::test::count_lines;
using anyk::test::slurp;

// A fresh directory under the system temp dir, removed when the fixture dies.
struct TempDir : anyk::test::TempDir {
  TempDir() : anyk::test::TempDir("test_cli") {}
};

// anyk with args (paths in them are absolute), run in dir.
Result run(const std::string& args, const fs::path& dir) { return anyk::test::run_anyk(args, {.cwd = dir}); }

// A small prepared data dir, so that the only fault in a command is the one under test.
fs::path make_data(const TempDir& t) {
  fs::path text = t.path / "fox.txt";
  {
    std::ofstream o(text);
    for (int i = 0; i < 900; ++i) o << "the quick brown fox jumps over the lazy dog. ";
  }
  fs::path data = t.path / "data";
  Result r = run("prepare --input " + text.string() + " --out " + data.string(), t.path);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  REQUIRE(fs::exists(data / "train.bin"));
  REQUIRE(fs::exists(data / "val.bin"));
  return data;
}

// The contract every rejected command meets.
void expect_rejected(const Result& r, const fs::path& run_dir, std::initializer_list<std::string> needles) {
  CHECK(r.rc != 0);
  anyk::test::check_one_error_line(r.err, needles);
  CHECK_FALSE(fs::exists(run_dir));
}

const std::string kTinyNoSteps =
    " --layers 1 --dim 16 --heads 2 --experts 4 --expert-hidden 16 --seq-len 16 --batch 2 --warmup 0 --threads 1";
const std::string kTiny = kTinyNoSteps + " --steps 2";

}  // namespace

TEST_CASE("cli: train rejects bad input with one error line and writes nothing") {
  TempDir t;
  const fs::path data = make_data(t);
  const fs::path run_dir = t.path / "run";
  const std::string base = "train --data " + data.string() + " --run-dir " + run_dir.string() + kTiny;

  SUBCASE("unknown option") {
    expect_rejected(run(base + " --frobnicate 3", t.path), run_dir, {"frobnicate"});
  }
  SUBCASE("k-max above experts") {
    expect_rejected(run(base + " --k-max 7", t.path), run_dir, {"--k-max", "7"});
  }
  SUBCASE("missing data dir") {
    const fs::path missing = t.path / "no_such_data";
    expect_rejected(run("train --data " + missing.string() + " --run-dir " + run_dir.string() + kTiny, t.path),
                    run_dir, {missing.string()});
  }
  SUBCASE("non-numeric value") {
    expect_rejected(run("train --data " + data.string() + " --run-dir " + run_dir.string() + kTinyNoSteps +
                            " --steps abc",
                        t.path),
                    run_dir, {"steps", "abc"});
  }
  SUBCASE("non-numeric value in a config file") {
    const fs::path cfg = t.path / "bad.ini";
    std::ofstream(cfg) << "tau = wide\n";
    expect_rejected(run(base + " --config " + cfg.string(), t.path), run_dir, {"tau", "wide", cfg.string()});
  }
  SUBCASE("stray positional argument") {
    expect_rejected(run(base + " extra", t.path), run_dir, {"extra"});
  }
  SUBCASE("unknown K strategy") {
    expect_rejected(run(base + " --k-strategy sometimes", t.path), run_dir, {"sometimes"});
  }
  SUBCASE("comm nccl without --device cuda") {
    const Result r = run(base + " --comm nccl", t.path);
    CHECK(r.rc == 2);
    expect_rejected(r, run_dir, {"--comm nccl", "--device cuda", "--comm mpi"});
  }
  SUBCASE("unknown communicator") {
    const Result r = run(base + " --comm foo", t.path);
    CHECK(r.rc == 2);
    expect_rejected(r, run_dir, {"foo", "mpi", "nccl"});
  }
  SUBCASE("vocab smaller than the data's tokens") {
    expect_rejected(run(base + " --vocab 100", t.path), run_dir, {"100"});
  }
}

TEST_CASE("cli: a config file sets options and flags override it") {
  TempDir t;
  const fs::path data = make_data(t);
  const fs::path run_dir = t.path / "run";
  const fs::path cfg = t.path / "c.ini";
  std::ofstream(cfg) << "# comment\ndim = 16\nheads = 2\nexperts = 4\nsteps = 999\n";
  Result r = run("train --config " + cfg.string() + " --data " + data.string() + " --run-dir " + run_dir.string() +
                     " --layers 1 --expert-hidden 16 --seq-len 16 --batch 2 --steps 2 --warmup 0 --threads 1"
                     " --eval-windows 2",
                 t.path);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const std::string ini = slurp(run_dir / "config.ini");
  CHECK(ini.find("dim = 16\n") != std::string::npos);
  CHECK(ini.find("steps = 2\n") != std::string::npos);  // the flag won over the file's 999
  CHECK(ini.find("comm = mpi\n") != std::string::npos);  // the default communicator
  CHECK(fs::exists(run_dir / "model.h5"));
}

TEST_CASE("cli: help and usage") {
  TempDir t;
  Result top = run("--help", t.path);
  CHECK(top.rc == 0);
  CHECK(top.out.find("--k-strategy") != std::string::npos);
  Result train = run("train --help", t.path);
  CHECK(train.rc == 0);
  CHECK(train.out.find("--k-strategy") != std::string::npos);
  CHECK(train.out.find("--router-kl-weight") != std::string::npos);
  Result eval = run("eval --help", t.path);
  CHECK(eval.rc == 0);
  CHECK(eval.out.find("--layer-k") != std::string::npos);
  Result prep = run("prepare --help", t.path);
  CHECK(prep.rc == 0);
  CHECK(prep.out.find("--val-fraction") != std::string::npos);
  Result none = run("", t.path);
  CHECK(none.rc == 2);
  CHECK(none.err.find("usage") != std::string::npos);
  Result bad = run("fly", t.path);
  CHECK(bad.rc != 0);
  CHECK(count_lines(bad.err) == 1);
  CHECK(bad.err.find("fly") != std::string::npos);
}

TEST_CASE("cli: eval rejects a per-layer K list of the wrong length") {
  TempDir t;
  const fs::path data = make_data(t);
  const fs::path run_dir = t.path / "run";
  Result r = run("train --data " + data.string() + " --run-dir " + run_dir.string() + kTiny + " --eval-windows 2",
                 t.path);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  Result e = run("eval --run-dir " + run_dir.string() + " --data " + data.string() + " --layer-k 2,2", t.path);
  CHECK(e.rc != 0);
  CHECK(count_lines(e.err) == 1);
  CHECK(e.err.find("--layer-k") != std::string::npos);
  Result e2 = run("eval --run-dir " + run_dir.string() + " --data " + data.string() + " --k 5", t.path);
  CHECK(e2.rc != 0);
  CHECK(e2.err.find("5") != std::string::npos);
  // A weights file that lacks a dataset the config needs: the error names the file and dataset.
  fs::path other = t.path / "other";
  fs::create_directories(other);
  std::string ini = slurp(run_dir / "config.ini");
  auto pos = ini.find("layers = 1");
  REQUIRE(pos != std::string::npos);
  ini.replace(pos, 10, "layers = 2");
  std::ofstream(other / "config.ini") << ini;
  fs::copy_file(run_dir / "model.h5", other / "model.h5");
  Result e3 = run("eval --run-dir " + other.string() + " --data " + data.string() + " --k 1", t.path);
  CHECK(e3.rc != 0);
  CHECK(count_lines(e3.err) == 1);
  CHECK(e3.err.find("model.h5") != std::string::npos);
  CHECK(e3.err.find("layers.1.") != std::string::npos);
}
