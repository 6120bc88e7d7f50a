// Device selection end to end through the anyk binary: `--device checked` (the CPU kernels on a
// pool the host cannot read, always strict from the CLI) must give the CPU run's metrics bit for
// bit: losses, grad norms, eval and K-sweep losses, at 1 rank and at 2 ranks with ep 2 (the expert
// gather and --init-weights through the copy ops), under the top_p strategy (the eval twin), across
// save and resume on the other device, in `anyk eval`, and in the KV-cache decoder (`anyk generate`,
// `eval --frontier`). `train --precision bf16` off CUDA (bf16 activation storage): checked equals
// cpu, close to f32, less memory, exact resume. Bad --device / --precision values, bf16 off CUDA
// for eval and generate, and --device cuda in a build or on a machine without it give one-line
// errors, exit 2.
#include <doctest/doctest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/cuda_api.h"
#include "runtime/arena.h"
#include "runtime/checked_device.h"
#include "runtime/devices.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace anyk;
using anyk::test::Json;

namespace {

const std::string kModel =
    "--layers 2 --dim 32 --heads 2 --experts 4 --expert-hidden 32 --seq-len 32 --batch 2 --k-min 1 --k-max 4 "
    "--log-every 1 --eval-every 2 --eval-windows 4 --threads 1 --seed 3";

struct Runner {
  anyk::test::TempDir tmp{"test_device_cli"};
  fs::path dir = tmp.path;
  Runner() {
    std::ofstream o(dir / "text.txt");
    for (int i = 0; i < 300; ++i) o << "line " << i << ": experts learn a coarse-to-fine ranking. ";
    o.close();
    REQUIRE(run(0, "prepare --input text.txt --out data --val-fraction 0.2").rc == 0);
  }
  anyk::test::RunResult run(int np, const std::string& args) {
    return anyk::test::run_anyk(args, {.np = np, .cwd = dir, .timeout_s = 120});
  }
  void train(int np, const std::string& run_dir, const std::string& args) {
    auto r = run(np, "train --data data --run-dir " + run_dir + " " + kModel + " " + args);
    REQUIRE_MESSAGE(r.rc == 0, r.err);
  }
  // metrics.jsonl without the fields that measure time or name the device. arena_mb is left out
  // too: on the CPU the dispatch plan shares the step arena, on a device it has a host arena of its own.
  std::vector<Json> records(const std::string& run_dir, int64_t after_step = 0) {
    std::vector<Json> out;
    for (Json j : anyk::test::read_jsonl(dir / run_dir / "metrics.jsonl")) {
      for (const char* k : {"tok_per_s", "mfu", "t_compute", "t_dispatch", "t_sync", "t_optim", "arena_mb", "device",
                            "precision"})
        j.erase(k);
      if (!j.contains("step") || j["step"].get<int64_t>() > after_step) out.push_back(j);
    }
    return out;
  }
  std::string text(const std::string& f) { return anyk::test::slurp(dir / f); }
};

// Exact equality of the JSON records: the numbers are printed in shortest round-trip form, so
// equal text is equal bits.
void check_same(const std::vector<Json>& a, const std::vector<Json>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].dump());
    CHECK(a[i] == b[i]);
  }
}

}  // namespace

TEST_CASE("train --device checked equals --device cpu bit for bit, at 1 rank and 2 ranks with ep 2") {
  Runner r;
  // 1 rank, checkpoints at steps 3 and 6.
  r.train(0, "cpu", "--steps 6 --save-every 3 --k-strategy layer");
  r.train(0, "chk", "--steps 6 --save-every 3 --k-strategy layer --device checked");
  const auto cpu = r.records("cpu");
  CHECK(cpu.size() == 6 + 4 + 4);  // 6 steps, evals at steps 2 and 4 (K=1 and K=4 each), the sweep K=1..4
  check_same(cpu, r.records("chk"));
  CHECK(r.text("cpu/sweep.json") == r.text("chk/sweep.json"));
  CHECK(r.text("chk/train.log").find("device: checked") != std::string::npos);
  CHECK(r.text("chk/train.log").find("strict") != std::string::npos);
  CHECK(r.text("chk/config.ini").find("device = checked") != std::string::npos);
  CHECK(anyk::test::read_jsonl(r.dir / "chk/metrics.jsonl", "train")[0]["device"] == "checked");

  {
    INFO("resume on the other device continues exactly as the uninterrupted CPU run");
    r.train(0, "chk_to_cpu", "--steps 6 --k-strategy layer --resume chk/checkpoints/step_3 --device cpu");
    r.train(0, "cpu_to_chk", "--steps 6 --k-strategy layer --resume cpu/checkpoints/step_3 --device checked");
    const auto tail = r.records("cpu", 3);
    CHECK(tail.size() == 3 + 2 + 4);  // steps 4..6, the eval at step 4 (2 K), the sweep
    check_same(tail, r.records("chk_to_cpu"));
    check_same(tail, r.records("cpu_to_chk"));
  }
  {
    INFO("2 ranks, ep 2, from --init-weights: the expert gather and the weights go through the copy ops");
    const std::string args = "--steps 4 --k-strategy layer --ep 2 --init-weights cpu/model.h5";
    r.train(2, "cpu_np2", args);
    r.train(2, "chk_np2", args + " --device checked");
    const auto a = r.records("cpu_np2");
    CHECK(a.size() == 4 + 2 + 4);  // steps, the eval at step 2, the sweep
    check_same(a, r.records("chk_np2"));
    CHECK(r.text("cpu_np2/sweep.json") == r.text("chk_np2/sweep.json"));
  }
  {
    INFO("top_p (the evaluation twin) on the checked device");
    r.train(0, "cpu_topp", "--steps 3 --k-strategy top_p --expert-top-p 0.6");
    r.train(0, "chk_topp", "--steps 3 --k-strategy top_p --expert-top-p 0.6 --device checked");
    check_same(r.records("cpu_topp"), r.records("chk_topp"));
  }
  {
    INFO("anyk eval --device checked equals the CPU: model.h5 sweep, checkpoint router analysis");
    for (const char* dev : {"cpu", "checked"}) {
      const std::string d = dev;
      auto e = r.run(0, "eval --run-dir cpu --data data --sweep --eval-windows 4 --json sweep_" + d +
                            ".json --device " + d);
      REQUIRE_MESSAGE(e.rc == 0, e.err);
      CHECK((d == "cpu") == (e.err.find("device: checked") == std::string::npos));  // stderr: not a result
      e = r.run(0, "eval --checkpoint cpu/checkpoints/step_3 --data data --analyze --k 2 --eval-windows 4 --json an_" +
                       d + ".json --device " + d);
      REQUIRE_MESSAGE(e.rc == 0, e.err);
    }
    CHECK(r.text("sweep_cpu.json") == r.text("sweep_checked.json"));
    CHECK(r.text("sweep_cpu.json").find("val_loss") != std::string::npos);
    CHECK(r.text("an_cpu.json") == r.text("an_checked.json"));
    CHECK(r.text("an_cpu.json").size() > 100);
  }
  {
    INFO("anyk generate and eval --frontier (the KV-cache decoder) on the checked device equal the CPU");
    std::string text[2];
    Json front[2];
    for (int i = 0; i < 2; ++i) {
      const std::string d = i ? "checked" : "cpu";
      auto g = r.run(0, "generate --run-dir cpu --prompt 'line 7: ' --max-new 48 --temperature 0.9 --top-k 40 "
                        "--seed 5 --device " + d);
      REQUIRE_MESSAGE(g.rc == 0, g.err);
      CHECK((d == "cpu") == (g.err.find("device: checked") == std::string::npos));
      text[i] = g.out;
      auto f = r.run(0, "eval --run-dir cpu --data data --frontier --frontier-budgets 1,2.5 --gen-tokens 40 "
                        "--eval-windows 4 --json fr_" + d + ".json --device " + d);
      REQUIRE_MESSAGE(f.rc == 0, f.err);
      front[i] = Json::parse(r.text("fr_" + d + ".json"));
      for (Json& pt : front[i]["frontier"]) pt.erase("decode_tokens_per_s"), pt.erase("prompt_tokens_per_s");
    }
    CHECK(text[0].size() == std::string("line 7: ").size() + 48 + 1);  // 48 new tokens past the 32-token context
    CHECK(text[0] == text[1]);
    CHECK(front[0]["frontier"].size() == 5);  // K = 1..4 and the budget 2.5 schedule
    CHECK(front[0] == front[1]);
  }
}

TEST_CASE("train --precision bf16 off CUDA: activations stored in bf16, the checked device equal, close to f32") {
  Runner r;
  const std::string args = "--steps 8 --k-strategy layer --save-every 4";
  r.train(0, "f32", args);
  r.train(0, "bf16", args + " --precision bf16");
  r.train(0, "bf16_chk", args + " --precision bf16 --device checked");
  CHECK(r.text("bf16/train.log").find("activations stored in bf16, GEMMs f32 on this device") != std::string::npos);
  CHECK(r.text("bf16/config.ini").find("precision = bf16") != std::string::npos);
  // The same kernels on the guarded pool: bit for bit.
  check_same(r.records("bf16"), r.records("bf16_chk"));
  // Against f32: the same K draws, losses within bf16's rounding, less activation memory.
  const auto a = anyk::test::read_jsonl(r.dir / "f32/metrics.jsonl", "train");
  const auto b = anyk::test::read_jsonl(r.dir / "bf16/metrics.jsonl", "train");
  REQUIRE(a.size() == 8);
  REQUIRE(b.size() == 8);
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    CHECK(a[i]["k_per_layer"] == b[i]["k_per_layer"]);
    const double la = a[i]["loss"].get<double>(), lb = b[i]["loss"].get<double>();
    CHECK(std::abs(la - lb) <= 2e-2 * std::abs(la));
    differ += la != lb;
    CHECK(b[i]["arena_mb"].get<double>() < a[i]["arena_mb"].get<double>());
  }
  CHECK(differ > 0);  // bf16 storage did change the arithmetic
  {
    INFO("resume of a bf16 run continues it exactly (checkpoints are f32 whatever the storage)");
    r.train(0, "bf16_res", "--steps 8 --k-strategy layer --precision bf16 --resume bf16/checkpoints/step_4");
    check_same(r.records("bf16", 4), r.records("bf16_res"));
  }
  {
    INFO("2 ranks with ep 2: bf16 rows cross the all-to-all; checked equals cpu");
    r.train(2, "bf16_np2", "--steps 4 --k-strategy layer --ep 2 --precision bf16");
    r.train(2, "bf16_np2_chk", "--steps 4 --k-strategy layer --ep 2 --precision bf16 --device checked");
    check_same(r.records("bf16_np2"), r.records("bf16_np2_chk"));
  }
}

TEST_CASE("bad --device and --precision values are one-line errors with exit 2 (usage; no CUDA device: 1)") {
  Runner r;
  const std::string train = "train --data data --run-dir bad " + kModel + " --steps 2 ";
  const std::string eval = "eval --run-dir none --data data --k 1 ";
  struct Bad {
    std::string args;
    std::vector<std::string> needles;
  };
  std::vector<Bad> bad = {
      {"--device gpu", {"--device gpu", "cpu, cuda or checked"}},
      {"--precision fp8", {"--precision fp8", "f32 or bf16"}},
  };
  // train takes bf16 on every device (bf16 activation storage; the test case above); generate only
  // with CUDA.
  const std::vector<Bad> bf16_off_cuda = {
      {"--precision bf16", {"--precision bf16 needs --device cuda"}},
      {"--device checked --precision bf16", {"--precision bf16 needs --device cuda"}},
  };
  if (!cuda::built_with_cuda())
    bad.push_back({"--device cuda", {"--device cuda", "built without CUDA"}});
  else if (cuda::device_count() == 0)
    bad.push_back({"--device cuda", {"--device cuda"}});
  for (const Bad& b : bad) {
    CAPTURE(b.args);
    auto t = r.run(0, train + b.args);
    CHECK(t.rc == (b.args == "--device cuda" ? 1 : 2));  // a valid request this machine cannot serve: run time
    if (b.needles.size() == 1) anyk::test::check_one_error_line(t.err, {b.needles[0]});
    else anyk::test::check_one_error_line(t.err, {b.needles[0], b.needles[1]});
    CHECK_FALSE(fs::exists(r.dir / "bad"));  // refused before the run dir is made
  }
  // eval checks the names before reading anything (the run dir here does not exist); the
  // bf16 and CUDA checks come once the model is known.
  for (size_t i = 0; i < 2; ++i) {
    auto e = r.run(0, eval + bad[i].args);
    CHECK(e.rc == 2);
    anyk::test::check_one_error_line(e.err, {bad[i].needles[0], bad[i].needles[1]});
  }
  // generate checks the device before reading the model (w.h5 does not exist here).
  bad.insert(bad.end(), bf16_off_cuda.begin(), bf16_off_cuda.end());
  for (size_t i = 0; i < bad.size(); ++i) {
    CAPTURE(bad[i].args);
    auto g = r.run(0, "generate --weights w.h5 --prompt hi " + bad[i].args);
    CHECK(g.rc == (bad[i].args == "--device cuda" ? 1 : 2));
    if (bad[i].needles.size() == 1) anyk::test::check_one_error_line(g.err, {bad[i].needles[0]});
    else anyk::test::check_one_error_line(g.err, {bad[i].needles[0], bad[i].needles[1]});
  }
}

TEST_CASE("device names and the node-local rank from the environment") {
  CHECK(parse_device("cpu") == Device::CPU);
  CHECK(parse_device("cuda") == Device::CUDA);
  CHECK(parse_device("checked") == Device::Checked);
  CHECK_THROWS_WITH_AS(parse_device("CUDA"), doctest::Contains("--device CUDA is not a device"), Error);
  CHECK(parse_bf16("bf16"));
  CHECK_FALSE(parse_bf16("f32"));
  CHECK_THROWS_WITH_AS(parse_bf16("fp16"), doctest::Contains("choose f32 or bf16"), Error);
  CHECK(use_device(Device::CPU, false) == "cpu");

  const char* vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"};
  std::vector<std::pair<std::string, std::string>> saved;
  for (const char* v : vars)
    if (const char* x = std::getenv(v)) saved.push_back({v, x});
  for (const char* v : vars) ::unsetenv(v);
  CHECK(local_rank_from_env() == 0);
  ::setenv("MPI_LOCALRANKID", "5", 1);
  CHECK(local_rank_from_env() == 5);
  ::setenv("SLURM_LOCALID", "3", 1);
  CHECK(local_rank_from_env() == 3);  // Slurm's before MPICH's
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  CHECK(local_rank_from_env() == 1);  // OpenMPI's first
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "x1", 1);
  CHECK_THROWS_WITH_AS(local_rank_from_env(), doctest::Contains("OMPI_COMM_WORLD_LOCAL_RANK='x1'"), Error);
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "-2", 1);
  CHECK_THROWS_AS(local_rank_from_env(), Error);
  for (const char* v : vars) ::unsetenv(v);
  for (const auto& [k, v] : saved) ::setenv(k.c_str(), v.c_str(), 1);
}

TEST_CASE("use_device(checked) is strict: a stray host read faults with one line naming it") {
  const std::string err_path = (std::filesystem::temp_directory_path() / ("anyk_fault_" + std::to_string(::getpid()))).string();
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::signal(SIGSEGV, SIG_DFL);  // not doctest's crash report
    std::freopen(err_path.c_str(), "w", stderr);
    const std::string line = use_device(Device::Checked, false);
    Arena arena(1 << 16, Device::Checked);
    Tensor t = arena.tensor({4}, DType::F32, true);
    if (line.find("strict") == std::string::npos || !checked_pool().strict()) ::_exit(3);
    volatile float x = static_cast<volatile float*>(t.data)[0];  // must fault
    (void)x;
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSEGV);
  const std::string err = anyk::test::slurp(err_path);
  std::filesystem::remove(err_path);
  anyk::test::check_one_error_line(err, {"host code touched checked-device memory at 0x", "gdb"});
}
