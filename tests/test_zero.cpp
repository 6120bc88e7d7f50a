// --zero 1 end to end through `mpiexec anyk train` (a sharded optimizer: AdamW moments split over
// each region's data-parallel ranks, gradients reduce-scattered, parameters all-gathered):
// - np 4 (ep 4, and ep 2 with experts sharded over their 2 replicas): the losses of --zero 0
//   within 1e-6 per step. Not bit for bit: MPI_Allreduce and MPI_Reduce_scatter may add the four
//   ranks' float gradients in different orders ((a+b)+(c+d) against ((a+b)+c)+d), which moves a
//   summed gradient by an ulp now and then. The global gradient norm (from the blocks' squares,
//   summed over the world) within 1e-6 relative. The AdamW moments each rank allocated (the trainer's
//   `optimizer:` line: the sizes of its buffers) fall 4x for dense parameters, 2x for experts at ep 2.
// - np 2: bit-identical losses, weights and checkpoints (a sum of two floats is the same either
//   way round), at ep 2 and at ep 1 (the experts' moments sharded too) on --device checked; the
//   checkpoint holds the whole moments, the same bytes as --zero 0's.
// - resume: a --zero 1 checkpoint continues bit for bit on its layout, and resumes without
//   --zero into another np/ep; a --zero 0 checkpoint resumes with --zero 1.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/weights.h"
#include "launch/memory.h"
#include "model/lm.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace anyk;

namespace {

struct Runner {
  anyk::test::TempDir tmp{"test_zero"};
  fs::path dir = tmp.path;
  Runner() {
    std::ofstream o(dir / "text.txt");
    for (int i = 0; i < 400; ++i) o << "line " << i << ": experts learn a coarse-to-fine ranking. ";
    o.close();
    REQUIRE(run(0, "prepare --input text.txt --out data --val-fraction 0.2") == 0);
  }
  int run(int np, const std::string& args) {
    anyk::test::RunOptions o{.np = np, .cwd = dir, .timeout_s = 180};
    const auto r = anyk::test::run_anyk(args, o);
    INFO(r.command << "\n" << r.err);
    CHECK(r.rc == 0);
    return r.rc;
  }
  int train(int np, const std::string& run_dir, const std::string& extra) {
    return run(np, "train --data data --run-dir " + run_dir + " " + kModel + " " + extra);
  }
  std::vector<double> losses(const std::string& run_dir) const {
    return anyk::test::numbers(anyk::test::read_jsonl(dir / run_dir / "metrics.jsonl", "train"), "loss");
  }
  std::vector<double> norms(const std::string& run_dir) const {
    return anyk::test::numbers(anyk::test::read_jsonl(dir / run_dir / "metrics.jsonl", "train"), "grad_norm");
  }
  // The `optimizer:` line's per-rank moment bytes: {dense lo, dense hi, experts lo, experts hi}.
  std::vector<double> moment_bytes(const std::string& run_dir) const {
    const std::string log = anyk::test::slurp(dir / run_dir / "train.log");
    static const std::regex re("AdamW moments allocated per rank: dense ([0-9]+)\\.\\.([0-9]+) bytes, experts "
                               "([0-9]+)\\.\\.([0-9]+) bytes");
    std::smatch m;
    REQUIRE(std::regex_search(log, m, re));
    return {std::stod(m[1]), std::stod(m[2]), std::stod(m[3]), std::stod(m[4])};
  }
  static inline const std::string kModel =
      "--steps 10 --layers 2 --dim 32 --heads 2 --experts 4 --expert-hidden 32 --seq-len 32 --batch 2 "
      "--k-strategy layer --k-min 1 --k-max 4 --log-every 1 --eval-every 0 --eval-windows 4 --threads 1 --seed 3 "
      "--save-every 5";
};

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

// Every float of a saved model or checkpoint, in one vector: parameters, then (checkpoints) m and v.
std::vector<float> weights(const fs::path& model_h5) {
  LocalDispatcher d(4);
  LM lm(small_config(), d);
  io::load_weights(model_h5.string(), lm);
  std::vector<float> out;
  for (Region r : {Region::Dense, Region::Expert}) {
    const float* p = static_cast<const float*>(lm.params().region_data(r));
    out.insert(out.end(), p, p + lm.params().region_numel(r));
  }
  return out;
}

std::vector<float> checkpoint(const fs::path& step_dir) {
  LocalDispatcher d(4);
  LM lm(small_config(), d);
  ParamStore& ps = lm.params();
  AdamW opt(AdamWConfig{});
  int reg[2];
  for (Region r : {Region::Dense, Region::Expert}) {
    const int64_t n = ps.region_numel(r);
    reg[int(r)] = opt.add_region(static_cast<float*>(ps.region_data(r)), static_cast<const float*>(ps.region_grad(r)),
                                 n, {{0, n, true}});
  }
  const io::CheckpointMeta meta = io::read_checkpoint_meta(step_dir.string());
  io::read_checkpoint_tensors(step_dir.string(), meta, io::dense_refs(ps, &opt, reg[0]),
                              io::expert_refs(ps, &opt, reg[1], 0));
  std::vector<float> out;
  for (Region r : {Region::Dense, Region::Expert}) {
    const int64_t n = ps.region_numel(r);
    const float* p = static_cast<const float*>(ps.region_data(r));
    out.insert(out.end(), p, p + n);
    out.insert(out.end(), opt.m(reg[int(r)]), opt.m(reg[int(r)]) + n);
    out.insert(out.end(), opt.v(reg[int(r)]), opt.v(reg[int(r)]) + n);
  }
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return !a.empty() && a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<double> tail(const std::vector<double>& v, size_t n) {
  return std::vector<double>(v.end() - std::ptrdiff_t(std::min(n, v.size())), v.end());
}

}  // namespace

TEST_CASE("np 4: --zero 1 gives --zero 0's losses within 1e-6 and a quarter of the dense moments per rank") {
  Runner r;
  for (int ep : {4, 2}) {
    CAPTURE(ep);
    const std::string base = "base_ep" + std::to_string(ep), zero = "zero_ep" + std::to_string(ep);
    REQUIRE(r.train(4, base, "--ep " + std::to_string(ep)) == 0);
    REQUIRE(r.train(4, zero, "--ep " + std::to_string(ep) + " --zero 1") == 0);
    const auto a = r.losses(base), b = r.losses(zero);
    REQUIRE(a.size() == 10);
    REQUIRE(b.size() == a.size());
    CHECK(a.back() < a.front());  // it trains
    for (size_t i = 0; i < a.size(); ++i) CHECK(std::abs(a[i] - b[i]) <= 1e-6);
    // The global gradient norm (clipping is active: it exceeds --grad-clip 1) from the blocks.
    const auto na = r.norms(base), nb = r.norms(zero);
    REQUIRE(nb.size() == na.size());
    CHECK(na.front() > 1.0);
    for (size_t i = 0; i < na.size(); ++i) CHECK(std::abs(na[i] - nb[i]) <= 1e-6 * na[i]);
    // Moments per rank, as allocated: dense over 4 ranks, experts over their 4 / ep replicas.
    const auto mb = r.moment_bytes(base), mz = r.moment_bytes(zero);
    CHECK(mb[0] == mb[1]);  // without --zero every rank holds the same dense moments
    CHECK(mz[0] * 4 <= mb[0]);
    CHECK(mz[1] * 4 >= mb[0]);
    CHECK(mz[1] - mz[0] <= 8);  // blocks differ by one value at most (m and v)
    const int edp = 4 / ep;
    CHECK(mz[2] * edp <= mb[2]);
    CHECK(mz[3] * edp >= mb[3]);
    if (edp > 1) CHECK(mz[3] < mb[3]);
    // A --zero 1 checkpoint continues bit for bit on its own layout.
    REQUIRE(r.train(4, zero + "_resumed", "--ep " + std::to_string(ep) + " --zero 1 --resume " + zero +
                                              "/checkpoints/step_5") == 0);
    CHECK(r.losses(zero + "_resumed") == tail(b, 5));
    CHECK(same_bits(weights(r.dir / (zero + "_resumed") / "model.h5"), weights(r.dir / zero / "model.h5")));
  }
}

TEST_CASE("np 2: --zero 1 is bit-identical (also on --device checked); its checkpoints are layout-free") {
  Runner r;
  REQUIRE(r.train(2, "base", "--ep 2") == 0);
  REQUIRE(r.train(2, "zero", "--ep 2 --zero 1") == 0);
  // ep 1: the experts' moments sharded too (over their 2 replicas), on the checked device.
  REQUIRE(r.train(2, "base_ep1", "--ep 1") == 0);
  REQUIRE(r.train(2, "zero_ep1_checked", "--ep 1 --zero 1 --device checked") == 0);
  const auto a = r.losses("base");
  REQUIRE(a.size() == 10);
  CHECK(r.losses("zero") == a);
  CHECK(r.losses("zero_ep1_checked") == r.losses("base_ep1"));
  CHECK(same_bits(weights(r.dir / "zero/model.h5"), weights(r.dir / "base/model.h5")));
  CHECK(same_bits(weights(r.dir / "zero_ep1_checked/model.h5"), weights(r.dir / "base_ep1/model.h5")));
  // The checkpoints hold the whole moments: the same bytes as --zero 0's.
  CHECK(same_bits(checkpoint(r.dir / "zero/checkpoints/step_5"), checkpoint(r.dir / "base/checkpoints/step_5")));
  CHECK(same_bits(checkpoint(r.dir / "zero_ep1_checked/checkpoints/step_5"),
                  checkpoint(r.dir / "base_ep1/checkpoints/step_5")));
  // A --zero 1 checkpoint resumes without --zero into np 4 ep 4, as --zero 0's does.
  REQUIRE(r.train(4, "from_zero", "--ep 4 --resume zero/checkpoints/step_5") == 0);
  REQUIRE(r.train(4, "from_base", "--ep 4 --resume base/checkpoints/step_5") == 0);
  CHECK(r.losses("from_zero") == r.losses("from_base"));
  CHECK(r.losses("from_zero").size() == 5);
  // A --zero 0 checkpoint resumes with --zero 1 into np 2 ep 1 (experts sharded over 2 replicas)
  // exactly as without it, and so on the checked device.
  REQUIRE(r.train(2, "base_to_zero", "--ep 1 --zero 1 --device checked --resume base/checkpoints/step_5") == 0);
  REQUIRE(r.train(2, "base_to_base", "--ep 1 --resume base/checkpoints/step_5") == 0);
  CHECK(r.losses("base_to_zero") == r.losses("base_to_base"));
  CHECK(same_bits(weights(r.dir / "base_to_zero/model.h5"), weights(r.dir / "base_to_base/model.h5")));
}

TEST_CASE("--zero other than 0 or 1 is one clear error") {
  anyk::test::TempDir tmp{"test_zero_bad"};
  const auto res = anyk::test::run_anyk("train --data nowhere --run-dir " + (tmp.path / "x").string() + " --zero 2",
                                        anyk::test::RunOptions{.timeout_s = 60});
  CHECK(res.rc != 0);
  CHECK(res.err.find("--zero 2") != std::string::npos);
  CHECK(std::count(res.err.begin(), res.err.end(), '\n') == 1);
}

TEST_CASE("the memory estimate splits the state per rank and divides the moments under --zero 1") {
  launch::TrainOptions o;
  o.vocab = 256;
  for (int ep : {4, 2}) {
    CAPTURE(ep);
    o.zero = 0;
    const launch::MemoryEstimate a = launch::estimate_train_memory(o, 4, ep, true, 0);
    o.zero = 1;
    const launch::MemoryEstimate b = launch::estimate_train_memory(o, 4, ep, true, 0);
    CHECK(a.params > 0);
    CHECK(a.grads == a.params);       // the same layout
    CHECK(a.moments == 2 * a.params);  // m and v of every parameter
    CHECK(b.params == a.params);
    CHECK(b.grads == a.grads);
    CHECK(b.activations == a.activations);
    // Dense moments over 4 ranks, the experts' over their 4 / ep replicas (blocks rounded up).
    const double experts_local = 3.0 * o.layers * (o.experts / ep) * o.dim * o.expert_hidden;
    const double dense = a.params / 4 - experts_local;
    CHECK(b.moments == doctest::Approx(8 * (dense / 4 + experts_local / (4 / ep))).epsilon(1e-6));
    CHECK(b.total() < a.total());
    CHECK(b.describe().find("AdamW moments") != std::string::npos);
    CHECK(b.describe().find("--zero 1: dense 1/4") != std::string::npos);
    // Without --zero the refusal names it as a knob when the state is what does not fit.
    CHECK(a.largest_knob().find("--zero 1") == std::string::npos);  // activations dominate at the defaults
  }
  launch::TrainOptions big = o;  // a wide model on short sequences: the state dominates
  big.dim = 2048;
  big.expert_hidden = 4096;
  big.seq_len = 16;
  big.batch = 1;
  big.zero = 0;
  CHECK(launch::estimate_train_memory(big, 4, 4, true, 0).largest_knob().find("--zero 1") != std::string::npos);
  big.zero = 1;
  CHECK(launch::estimate_train_memory(big, 4, 4, true, 0).largest_knob().find("--zero 1") == std::string::npos);
  // The hook for --recompute layer: each layer's input instead of all its activations.
  o.zero = 0;
  o.layers = 8;
  const launch::MemoryEstimate keep = launch::estimate_train_memory(o, 1, 1, true, 0);
  const launch::MemoryEstimate rec = launch::estimate_train_memory(o, 1, 1, true, 0, true);
  CHECK(rec.activations < keep.activations / 2);
  CHECK(rec.describe().find("--recompute layer") != std::string::npos);
}
