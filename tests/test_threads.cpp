// Results do not depend on the thread count: the row-chunked products (kernels/cpu/parallel.h)
// give the bits of one unchunked single-threaded product at 1, 2 and 3 threads; `anyk train`
// gives bit-identical losses and final weights at 1, 2 and 3 threads, alone and under
// `mpiexec -np 2` (1 and 2 threads per rank), and np 1 (--grad-accum 2) gives the bits of np 2. And the thread rule (launch/threads.h): --threads,
// else OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK, else the node's cores / its ranks, printed once
// by every command (stdout; generate: stderr).
#include <doctest/doctest.h>
#include <omp.h>

#include <Eigen/Core>
#include <cctype>
#include <csignal>
#include <cstdlib>
#include <iterator>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/weights.h"
#include "kernels/cpu/eigen_maps.h"
#include "kernels/cpu/kernels.h"
#include "launch/threads.h"
#include "model/lm.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace anyk;

namespace {

std::vector<float> randf(size_t n, uint64_t seed) { return test::randn_as<float>(n, seed); }

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct Products {
  std::vector<float> y, dx, dw;
};

// linear_forward and linear_backward (dx and dw added onto non-zero starting values).
Products linear_at(int threads, const std::vector<float>& x, const std::vector<float>& w,
                   const std::vector<float>& dy, int N, int I, int O) {
  omp_set_num_threads(threads);
  Products p{std::vector<float>(size_t(N) * O), std::vector<float>(size_t(N) * I, 0.25f),
             std::vector<float>(size_t(O) * I, 0.5f)};
  cpu::linear_forward(p.y.data(), x.data(), w.data(), N, I, O);
  cpu::linear_backward(p.dx.data(), p.dw.data(), dy.data(), x.data(), w.data(), N, I, O);
  return p;
}

}  // namespace

TEST_CASE("row-chunked products: the bits of one unchunked product, at 1, 2 and 3 threads") {
  const int saved = omp_get_max_threads();
  // Shapes around the chunk sizes (16-row multiples, remainders of 1 row, fewer rows than a chunk).
  for (int N : {1, 7, 33, 100, 513, 2049}) {
    for (int IO : {16, 96, 257}) {
      const int I = IO, O = IO + 32;
      CAPTURE(N);
      CAPTURE(I);
      auto x = randf(size_t(N) * I, 1), w = randf(size_t(O) * I, 2), dy = randf(size_t(N) * O, 3);
      // The reference: one single-threaded Eigen product per output, no chunks.
      Eigen::setNbThreads(1);
      Products ref{std::vector<float>(size_t(N) * O), std::vector<float>(size_t(N) * I, 0.25f),
                   std::vector<float>(size_t(O) * I, 0.5f)};
      cpu::MatMap<float>(ref.y.data(), N, O).noalias() =
          cpu::CMatMap<float>(x.data(), N, I) * cpu::CMatMap<float>(w.data(), O, I).transpose();
      cpu::MatMap<float>(ref.dx.data(), N, I).noalias() +=
          cpu::CMatMap<float>(dy.data(), N, O) * cpu::CMatMap<float>(w.data(), O, I);
      cpu::MatMap<float>(ref.dw.data(), O, I).noalias() +=
          cpu::CMatMap<float>(dy.data(), N, O).transpose() * cpu::CMatMap<float>(x.data(), N, I);
      // And the products are right: one element against a double loop.
      double s = 0;
      for (int i = 0; i < I; ++i) s += double(x[i]) * w[i];
      CHECK(std::abs(ref.y[0] - s) <= 1e-4 * (1 + std::abs(s)));
      for (int t : {1, 2, 3}) {
        CAPTURE(t);
        const Products got = linear_at(t, x, w, dy, N, I, O);
        CHECK(same_bits(got.y, ref.y));
        CHECK(same_bits(got.dx, ref.dx));
        CHECK(same_bits(got.dw, ref.dw));
      }
    }
  }
  omp_set_num_threads(saved);
}

namespace {

struct Runner {
  test::TempDir tmp{"test_threads"};
  fs::path dir = tmp.path;
  Runner() {
    std::ofstream o(dir / "text.txt");
    for (int i = 0; i < 600; ++i) o << "line " << i << ": a reduction's order must not follow the threads. ";
  }
  void run(int np, const std::string& args, const std::vector<std::string>& env = {}) {
    test::RunOptions o{.np = np, .cwd = dir, .env = env, .timeout_s = 180};
    const auto r = test::run_anyk(args, o);
    REQUIRE_MESSAGE(r.rc == 0, r.command << "\n" << r.err);
  }
  std::vector<double> losses(const std::string& run_dir, const char* key = "loss") {
    return test::numbers(test::read_jsonl(dir / run_dir / "metrics.jsonl", "train"), key);
  }
};

// Big enough that every kernel's parallel region opens (2 threads get work), small enough for CI.
const std::string kModel =
    "--steps 30 --layers 2 --dim 64 --heads 2 --experts 4 --expert-hidden 128 --seq-len 64 --batch 8 "
    "--k-strategy layer --k-min 1 --k-max 4 --log-every 1 --eval-every 0 --eval-windows 4 --seed 5 "
    "--grad-clip 0.5";

ModelConfig model_config() {
  ModelConfig c;
  c.layers = 2;
  c.dim = 64;
  c.heads = 2;
  c.experts = 4;
  c.expert_hidden = 128;
  c.seq_len = 64;
  return c;
}

// The bytes of a saved model's dense and expert parameters.
std::vector<char> weight_bytes(const fs::path& model_h5) {
  LocalDispatcher d(4);
  LM lm(model_config(), d);
  io::load_weights(model_h5.string(), lm);
  std::vector<char> out;
  for (Region reg : {Region::Dense, Region::Expert}) {
    const char* p = static_cast<const char*>(lm.params().region_data(reg));
    out.insert(out.end(), p, p + lm.params().region_numel(reg) * int64_t(sizeof(float)));
  }
  return out;
}

void check_identical(Runner& r, const std::string& ref, const std::vector<std::string>& others) {
  const auto want = r.losses(ref);
  REQUIRE(want.size() == 30);
  CHECK(want.back() < want.front());  // it trains
  const auto wbytes = weight_bytes(r.dir / ref / "model.h5");
  for (const auto& name : others) {
    CAPTURE(name);
    CHECK(r.losses(name) == want);  // exact
    CHECK(r.losses(name, "grad_norm") == r.losses(ref, "grad_norm"));  // (the loss is summed from floats)
    CHECK(weight_bytes(r.dir / name / "model.h5") == wbytes);
  }
}

}  // namespace

TEST_CASE("training: the same losses and weights, bit for bit, at 1, 2 and 3 threads") {
  Runner r;
  r.run(0, "prepare --input text.txt --out data --val-fraction 0.2");
  for (int t : {1, 2, 3})
    r.run(0, "train --data data --run-dir t" + std::to_string(t) + " " + kModel + " --threads " + std::to_string(t));
  // The thread governor may change the count at every layer of the forward and every op of the
  // backward (kernels/cpu/thread_governor.h); its test hook makes it do so (3, 2, 1, 3, ...).
  r.run(0, "train --data data --run-dir cycle " + kModel + " --threads 3", {"ANYK_TEST_GOVERNOR_CYCLE=1"});
  const auto changes = r.losses("cycle", "thread_changes");
  REQUIRE(changes.size() == 30);
  CHECK(changes.front() >= 3);    // within the first step already
  CHECK(changes.back() >= 30 * 10);  // many per step
  for (double t : r.losses("t3", "thread_changes")) CHECK(t >= 0);  // recorded without the hook too
  check_identical(r, "t1", {"t2", "t3", "cycle"});
}

// generate's decode steps split their few-row products over the threads while the threads spin
// (kFewRowsSpinGrainFlops, kernels/cpu/parallel.h): this model's projections and experts (C 256,
// H 256: 2^16 to 2^18 multiply-adds per row) are above that grain and below the GEMM grain. At 2
// threads the sampled text must be that of 1 thread byte for byte, and a short prompt's logits bit
// for bit. GOMP_SPINCOUNT with the governor off keeps 2 spinning threads whatever the machine's
// load, so the split always runs.
TEST_CASE("generate: the same sampled text and logits at 1 and 2 threads (the decode products split)") {
  Runner r;
  r.run(0, "prepare --input text.txt --out data --val-fraction 0.2");
  r.run(0, "train --data data --run-dir g --steps 2 --layers 2 --dim 256 --heads 4 --experts 4 "
           "--expert-hidden 256 --seq-len 64 --batch 2 --eval-every 0 --eval-windows 2 --threads 1");
  const auto generate = [&](const std::string& args, int t) {
    test::RunOptions o{.cwd = r.dir, .env = {"GOMP_SPINCOUNT=100000", "ANYK_ADAPTIVE_THREADS=0"}, .timeout_s = 120};
    const auto res = test::run_anyk("generate --run-dir g " + args + " --threads " + std::to_string(t), o);
    REQUIRE_MESSAGE(res.rc == 0, res.command << "\n" << res.err);
    CHECK(res.err.find("anyk generate: " + std::to_string(t) + " thread") != std::string::npos);
    return res.out;
  };
  for (int k : {1, 4}) {
    const std::string args = "--prompt 'line 1' --max-new 48 --temperature 1 --seed 3 --k " + std::to_string(k);
    const std::string text1 = generate(args, 1), text2 = generate(args, 2);
    CAPTURE(k);
    CHECK(text1.size() > 40);
    CHECK(text1 == text2);
  }
  // Sampled text moves only when a token's draw falls near a boundary; the logits of a short
  // prompt's pass (14 rows: the few-row kernel too) are compared bit for bit.
  std::string logits[2];
  for (int t : {1, 2}) {
    const std::string file = "logits" + std::to_string(t) + ".bin";
    generate("--prompt 'line 12: a red' --k 2 --logits-out " + file, t);
    std::ifstream f(r.dir / file, std::ios::binary);
    logits[t - 1].assign(std::istreambuf_iterator<char>(f), {});
  }
  CHECK(logits[0].size() == 14 * 256 * sizeof(double));
  CHECK(logits[0] == logits[1]);
}

// np 1 with --grad-accum 2 reads what np 2 reads and draws the same K; its sums over micro-batches
// and ranks follow one fixed tree (parallel/grad_tree.h), so it gives the bits of np 2, expert
// parallel (--ep 2: experts split, an expert's rows from both ranks) or data parallel (--ep 1:
// expert gradients all-reduced), at 1 and 2 threads per rank.
TEST_CASE("training at np 1 and under mpiexec -np 2: the same bits, at 1 and 2 threads per rank") {
  Runner r;
  r.run(0, "prepare --input text.txt --out data --val-fraction 0.2");
  r.run(0, "train --data data --run-dir np1 " + kModel + " --grad-accum 2 --threads 1");
  for (int t : {1, 2})
    r.run(2, "train --data data --run-dir np2_t" + std::to_string(t) + " " + kModel + " --ep 2 --threads " +
                 std::to_string(t));
  r.run(2, "train --data data --run-dir np2_ep1 " + kModel + " --ep 1 --threads 2");
  check_identical(r, "np1", {"np2_t1", "np2_t2", "np2_ep1"});
}

TEST_CASE("thread rule: --threads, else OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK, else cores / ranks") {
  using launch::thread_rule;
  auto is = [](const launch::ThreadChoice& c, int n, const std::string& src) {
    INFO(c.source);
    CHECK(c.threads == n);
    CHECK(c.source.find(src) != std::string::npos);
  };
  is(thread_rule(3, "2", "4", 8, 8, 4), 3, "--threads");                // the flag wins
  is(thread_rule(0, "2", "4", 8, 8, 4), 2, "OMP_NUM_THREADS=2");        // per process, not divided
  is(thread_rule(0, "3,1", nullptr, 8, 8, 1), 3, "OMP_NUM_THREADS");    // a list: its first entry
  is(thread_rule(0, nullptr, "4", 8, 8, 4), 4, "SLURM_CPUS_PER_TASK=4");
  is(thread_rule(0, "", "4", 8, 8, 4), 4, "SLURM_CPUS_PER_TASK");       // empty = unset
  is(thread_rule(0, nullptr, nullptr, 8, 8, 3), 2, "8 cores / 3 ranks");
  is(thread_rule(0, nullptr, nullptr, 2, 2, 1), 2, "2 cores / 1 rank on it");
  is(thread_rule(0, nullptr, nullptr, 2, 2, 4), 1, "2 cores / 4 ranks");  // never 0
  is(thread_rule(0, nullptr, nullptr, 1, 8, 2), 1, "bound to");          // bound: its cores are its share
  is(thread_rule(0, nullptr, nullptr, 4, 8, 2), 4, "bound to");
  for (const char* bad : {"abc", "0", "-2", "2x", " "}) {
    CAPTURE(bad);
    try {
      thread_rule(0, bad, nullptr, 2, 2, 1);
      if (std::string(bad) != " ") FAIL("accepted OMP_NUM_THREADS=" << bad);
    } catch (const std::exception& e) {
      CHECK(std::string(e.what()).find("OMP_NUM_THREADS='" + std::string(bad) + "'") != std::string::npos);
      CHECK(std::string(e.what()).find("--threads") != std::string::npos);
    }
  }
  CHECK_THROWS_WITH(thread_rule(0, nullptr, "many", 2, 2, 1), doctest::Contains("SLURM_CPUS_PER_TASK='many'"));
}

namespace {

// The lines of err that start with prefix.
int lines_with(const std::string& err, const std::string& prefix) {
  int n = 0;
  for (size_t p = 0; (p = err.find(prefix, p)) != std::string::npos; ++p)
    if (p == 0 || err[p - 1] == '\n') ++n;
  return n;
}

}  // namespace

TEST_CASE("thread rule: train, eval, generate and convert print their choice, one line") {
  Runner r;
  r.run(0, "prepare --input text.txt --out data --val-fraction 0.2");
  const std::string tiny = "--steps 2 --layers 1 --dim 16 --heads 2 --experts 4 --expert-hidden 16 --seq-len 16 "
                           "--batch 2 --warmup 0 --eval-every 0 --eval-windows 2";
  auto run = [&](int np, std::vector<std::string> argv, const std::vector<std::string>& env) {
    test::RunOptions o{.np = np, .cwd = r.dir, .env = env, .timeout_s = 120};
    return test::run_command(argv, o);
  };
  auto anyk = [](const std::string& args, bool unset_omp = false) {
    auto a = test::anyk_argv(args);
    if (unset_omp) a.insert(a.begin(), {"env", "-u", "OMP_NUM_THREADS"});
    return a;
  };
  auto res = run(0, anyk("train --data data --run-dir run " + tiny + " --threads 2"), {});
  REQUIRE_MESSAGE(res.rc == 0, res.err);
  CHECK(lines_with(res.out, "anyk train: 2 threads per process (--threads)") == 1);
  res = run(0, anyk("eval --run-dir run --data data --k 1 --eval-windows 2"), {"OMP_NUM_THREADS=3"});
  REQUIRE_MESSAGE(res.rc == 0, res.err);
  CHECK(lines_with(res.out, "anyk eval: 3 threads per process (OMP_NUM_THREADS=3)") == 1);
  res = run(0, anyk("generate --run-dir run --prompt ab --max-new 2", true), {"SLURM_CPUS_PER_TASK=2"});
  REQUIRE_MESSAGE(res.rc == 0, res.err);
  CHECK(lines_with(res.err, "anyk generate: 2 threads per process (SLURM_CPUS_PER_TASK=2)") == 1);
  res = run(0, anyk("convert --checkpoint run --to consolidated --out c.h5 --threads 1"), {});
  REQUIRE_MESSAGE(res.rc == 0, res.err);
  CHECK(lines_with(res.out, "anyk convert: 1 thread per process (--threads)") == 1);
  // Under mpiexec without a setting: the cores are divided among the ranks, printed once (rank 0).
  res = run(2, anyk("train --data data --run-dir np2 --ep 2 " + tiny, true), {});
  REQUIRE_MESSAGE(res.rc == 0, res.err);
  int announced = 0;  // the thread line, once (rank 0), and not the other "anyk train:" lines
  for (size_t p = 0; (p = res.out.find(" per process (", p)) != std::string::npos; ++p) ++announced;
  CHECK(announced == 1);
  const bool divided = res.out.find("2 ranks on it)") != std::string::npos;
  const bool bound = res.out.find("this process is bound to)") != std::string::npos;
  CHECK((divided || bound));
  // A variable that is not a count: one error line naming it.
  res = run(0, anyk("train --data data --run-dir bad " + tiny), {"OMP_NUM_THREADS=lots"});
  CHECK(res.rc != 0);  // (libgomp warns about the value first)
  CHECK(test::error_of(res.err).find("OMP_NUM_THREADS='lots' is not a thread count") != std::string::npos);
  // Every command's --help states the rule.
  for (const char* cmd : {"train", "eval", "generate", "convert"}) {
    CAPTURE(cmd);
    res = run(0, anyk(std::string(cmd) + " --help"), {});
    std::string flat;  // the help's words, one space apart (it wraps lines)
    for (char c : res.out)
      if (!std::isspace(static_cast<unsigned char>(c)) || (!flat.empty() && flat.back() != ' '))
        flat += std::isspace(static_cast<unsigned char>(c)) ? ' ' : c;
    CHECK(flat.find("OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK, else this node's cores / its ranks") !=
          std::string::npos);
  }
}

// The wait-policy re-exec (launch/main.cpp) keeps the process's name: exec of /proc/self/exe
// itself would rename it "exe", hiding anyk from ps, pgrep and cluster_test.sh's kill case. By
// default OpenMP spins briefly (the thread governor gives threads back on a busy machine); with
// the governor off (ANYK_ADAPTIVE_THREADS=0) threads sleep at once; a user's own policy is kept.
TEST_CASE("anyk keeps its process name and sets its OpenMP wait policy unless the user chose one") {
  Runner r;
  r.run(0, "prepare --input text.txt --out data --val-fraction 0.2");
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  const bool user_policy = std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT");
  struct Case {
    std::string env, want;
  };
  const std::vector<Case> cases = {{"", user_policy ? "" : "GOMP_SPINCOUNT=100000"},
                                   {"ANYK_ADAPTIVE_THREADS=0", user_policy ? "" : "OMP_WAIT_POLICY=passive"},
                                   {"OMP_WAIT_POLICY=active", "OMP_WAIT_POLICY=active"}};
  int n = 0;
  for (const Case& c : cases) {
    CAPTURE(c.env);
    test::RunOptions o{.cwd = r.dir};
    if (!c.env.empty()) o.env = {c.env};
    test::Process p(test::anyk_argv("train --data data --run-dir long_" + std::to_string(n++) + " " + kModel +
                                    " --steps 1000000 --threads 1"),
                    o);
    const std::string proc = "/proc/" + std::to_string(p.pid());
    // Wait until the process runs with its final environment (after the re-exec, if any).
    std::string env;
    for (int i = 0; i < 600 && !p.done(); ++i) {
      env = read(proc + "/environ");
      if (c.want.empty() || env.find(c.want + '\0') != std::string::npos) break;
      p.wait_for(0.05);
    }
    REQUIRE_FALSE(p.done());
    if (!c.want.empty()) CHECK(env.find(c.want + '\0') != std::string::npos);
    // Never both: the default does not add a second policy beside the one it chose.
    if (c.env.empty() && !user_policy) CHECK(env.find("OMP_WAIT_POLICY=") == std::string::npos);
    CHECK(read(proc + "/comm") == "anyk\n");
    p.kill_group(SIGKILL);
    p.wait_for(10);
  }
}
