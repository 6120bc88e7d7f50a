// Checkpoints end to end through the `anyk` binary (tiny model, 12 steps): a resumed run repeats
// the uninterrupted run's losses bit for bit (np=1; np=2 ep=2), continues within 1e-5 in another
// layout (np=2 ep=2 -> np=1, np=4 ep=4), --keep prunes, a save killed part-way leaves the previous
// checkpoint as `latest` and resuming from it repeats the losses; convert round trips bit-exactly
// in weights and both moments, safetensors parses back to the same data; damaged or mismatched
// checkpoints are refused with one line naming the file and the dataset or field.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "io/h5.h"
#include "io/weights.h"
#include "model/lm.h"

#include "test_util.h"

namespace fs = std::filesystem;
using namespace anyk;
namespace h5 = anyk::io::h5;

namespace {

using anyk::test::Json;
using anyk::test::slurp;

const std::string kModel =
    "--steps 12 --layers 2 --dim 32 --heads 2 --experts 4 --expert-hidden 32 --seq-len 32 --batch 2 "
    "--k-strategy layer --k-min 1 --k-max 4 --log-every 1 --eval-every 0 --eval-windows 4 --threads 1 --seed 3";

// One corpus and the two uninterrupted reference runs, shared by every test case.
struct Fixture {
  anyk::test::TempDir tmp{"test_checkpoint"};
  fs::path dir = tmp.path;
  int ref1_rc = -1, ref2_rc = -1;
  std::string ref1_err, ref2_err;
  std::string last_out;  // stdout of the last run

  Fixture() {
    {
      std::ofstream o(dir / "text.txt");
      for (int i = 0; i < 400; ++i) o << "line " << i << ": experts learn a coarse-to-fine ranking. ";
    }
    REQUIRE(run(0, "prepare --input text.txt --out data --val-fraction 0.2") == 0);
    // ref1: one process, checkpoints every 4 steps, --keep 2 (step_4 is pruned at step 12).
    ref1_rc = run(0, "train --data data --run-dir ref1 " + kModel + " --grad-accum 4 --save-every 4 --keep 2",
                  &ref1_err);
    // ref2: np=2 ep=2 with the same global batch, all three checkpoints kept.
    ref2_rc = run(2, "train --data data --run-dir ref2 " + kModel + " --ep 2 --grad-accum 2 --save-every 4", &ref2_err);
  }
  // The anyk binary (under mpiexec when np > 0) in dir with a hard timeout (a hang fails the
  // test); the exit code.
  int run(int np, const std::string& args, std::string* err = nullptr, const std::string& env = "") {
    anyk::test::RunOptions o{.np = np, .cwd = dir, .timeout_s = 120};
    if (!env.empty()) o.env = {env};
    const auto r = anyk::test::run_anyk(args, o);
    if (err) *err = r.err;
    last_out = r.out;
    return r.rc;
  }

  // step -> loss from run_dir/metrics.jsonl; a step logged twice (a resumed run appends) keeps
  // the later value.
  std::map<int, double> losses(const std::string& run_dir) const {
    std::map<int, double> v;
    for (const auto& rec : anyk::test::read_jsonl(dir / run_dir / "metrics.jsonl", "train"))
      v[int(anyk::test::number(rec, "step"))] = anyk::test::number(rec, "loss");
    return v;
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void require_refs(Fixture& f) {
  REQUIRE_MESSAGE(f.ref1_rc == 0, f.ref1_err);
  REQUIRE_MESSAGE(f.ref2_rc == 0, f.ref2_err);
}

// Losses of `got` for steps first..12 equal (tol 0) or close to those of `want`.
void check_continues(const std::map<int, double>& want, const std::map<int, double>& got, int first, double tol) {
  REQUIRE(want.size() == 12);
  for (int s = first; s <= 12; ++s) {
    CAPTURE(s);
    REQUIRE(got.count(s) == 1);
    if (tol == 0)
      CHECK(got.at(s) == want.at(s));
    else
      CHECK(std::abs(got.at(s) - want.at(s)) <= tol * std::abs(want.at(s)));
  }
}

// Every float32 dataset of an HDF5 file, by path, read with the plain C API.
std::map<std::string, std::vector<float>> all_datasets(const fs::path& file) {
  std::map<std::string, std::vector<float>> out;
  h5::Handle f = h5::open_file(file.string());
  struct Ctx {
    std::map<std::string, std::vector<float>>* out;
  } ctx{&out};
  // A generic lambda converts to the link-visit callback of either HDF5 1.10 or 1.12+ API.
  H5Lvisit(
      f.id, H5_INDEX_NAME, H5_ITER_INC,
      [](hid_t loc, const char* name, const auto*, void* p) -> herr_t {
        hid_t obj = H5Oopen(loc, name, H5P_DEFAULT);
        if (obj < 0) return -1;
        if (H5Iget_type(obj) == H5I_DATASET) {
          hid_t sp = H5Dget_space(obj);
          std::vector<float> v(static_cast<size_t>(H5Sget_simple_extent_npoints(sp)));
          H5Dread(obj, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
          H5Sclose(sp);
          (*static_cast<Ctx*>(p)->out)[name] = std::move(v);
        }
        H5Oclose(obj);
        return 0;
      },
      &ctx);
  return out;
}

// kModel with one option's value replaced ("--experts 4" -> "--experts 8").
std::string model_with(const std::string& from, const std::string& to) {
  std::string m = kModel;
  auto p = m.find(from);
  REQUIRE(p != std::string::npos);
  return m.replace(p, from.size(), to);
}

}  // namespace

TEST_CASE("resume with the same layout repeats the loss sequence bit for bit (np=1, np=2 ep=2)") {
  Fixture& f = fixture();
  require_refs(f);
  std::string err;
  REQUIRE_MESSAGE(f.run(0, "train --data data --run-dir res1 " + kModel + " --grad-accum 4 --resume " +
                               "ref1/checkpoints/step_8",
                        &err) == 0,
                  err);
  auto got = f.losses("res1");
  CHECK(got.begin()->first == 9);  // steps continue from the saved step
  check_continues(f.losses("ref1"), got, 9, 0);

  REQUIRE_MESSAGE(f.run(2, "train --data data --run-dir res2 " + kModel + " --ep 2 --grad-accum 2 --resume " +
                               "ref2/checkpoints/step_4",
                        &err) == 0,
                  err);
  got = f.losses("res2");
  CHECK(got.begin()->first == 5);
  check_continues(f.losses("ref2"), got, 5, 0);
  // The final weights agree bit for bit too.
  CHECK(slurp(f.dir / "res2" / "model.h5").size() > 0);
  LocalDispatcher d(4);
  ModelConfig c = io::weights_config((f.dir / "ref2" / "model.h5").string());
  LM a(c, d), b(c, d);
  io::load_weights((f.dir / "ref2" / "model.h5").string(), a);
  io::load_weights((f.dir / "res2" / "model.h5").string(), b);
  for (Region r : {Region::Dense, Region::Expert})
    CHECK(std::memcmp(a.params().region_data(r), b.params().region_data(r),
                      size_t(a.params().region_numel(r)) * sizeof(float)) == 0);
}

TEST_CASE("resume into another layout (np=2 ep=2 -> np=1, np=4 ep=4) continues within 1e-5") {
  Fixture& f = fixture();
  require_refs(f);
  std::string err;
  REQUIRE_MESSAGE(f.run(0, "train --data data --run-dir to_np1 " + kModel + " --grad-accum 4 --resume " +
                               "ref2/checkpoints/step_4",
                        &err) == 0,
                  err);
  check_continues(f.losses("ref2"), f.losses("to_np1"), 5, 1e-5);
  REQUIRE_MESSAGE(f.run(4, "train --data data --run-dir to_np4 " + kModel + " --ep 4 --grad-accum 1 --resume " +
                               "ref2/checkpoints/step_4",
                        &err) == 0,
                  err);
  check_continues(f.losses("ref2"), f.losses("to_np4"), 5, 1e-5);
  CHECK(slurp(f.dir / "to_np4" / "train.log").find("saved by 2 ranks with ep 2") != std::string::npos);
}

TEST_CASE("--keep deletes older checkpoints; latest names the newest") {
  Fixture& f = fixture();
  require_refs(f);
  const fs::path c1 = f.dir / "ref1" / "checkpoints", c2 = f.dir / "ref2" / "checkpoints";
  CHECK(!fs::exists(c1 / "step_4"));  // --keep 2
  CHECK(fs::is_directory(c1 / "step_8"));
  CHECK(fs::is_directory(c1 / "step_12"));
  CHECK(slurp(c1 / "latest") == "step_12\n");
  for (const char* s : {"step_4", "step_8", "step_12"}) CHECK(fs::is_directory(c2 / s));  // default --keep 3
  for (const char* file : {"meta.h5", "experts_0.h5", "experts_1.h5"}) CHECK(fs::is_regular_file(c2 / "step_8" / file));
  CHECK(fs::is_regular_file(c1 / "step_8" / "experts_0.h5"));
  CHECK(!fs::exists(c1 / "step_8" / "experts_1.h5"));  // ep 1: one shard
  for (const auto& e : fs::directory_iterator(c2)) CHECK(e.path().extension() != ".tmp");
}

TEST_CASE("a save killed part-way leaves the previous checkpoint as latest; resuming from it repeats the run") {
  Fixture& f = fixture();
  require_refs(f);
  std::string err;
  const std::string args = "train --data data --run-dir killed " + kModel + " --ep 2 --grad-accum 2 --save-every 4";
  int rc = f.run(2, args, &err, "ANYK_FAULT_INJECT_SAVE=8");
  CHECK(rc != 0);
  // (It died, it did not hang: a hang fails the run's timeout.)
  CHECK(err.find("ANYK_FAULT_INJECT_SAVE=8") != std::string::npos);
  const fs::path c = f.dir / "killed" / "checkpoints";
  CHECK(slurp(c / "latest") == "step_4\n");
  CHECK(fs::is_directory(c / "step_8.tmp"));  // the half-written save
  CHECK(fs::is_regular_file(c / "step_8.tmp" / "meta.h5"));
  CHECK(!fs::exists(c / "step_8"));

  REQUIRE_MESSAGE(f.run(2, args + " --resume latest", &err) == 0, err);
  check_continues(f.losses("ref2"), f.losses("killed"), 1, 0);  // steps 1..4 from the first attempt
  CHECK(slurp(c / "latest") == "step_12\n");
  CHECK(!fs::exists(c / "step_8.tmp"));  // stale .tmp dirs are cleaned by the next save
  CHECK(fs::is_regular_file(f.dir / "killed" / "train.log.1"));  // the first attempt's log is kept
}

TEST_CASE("convert: sharded -> consolidated -> ep=4 -> consolidated is bit-identical; the moments are live") {
  Fixture& f = fixture();
  require_refs(f);
  std::string err;
  REQUIRE_MESSAGE(f.run(0, "convert --checkpoint ref2/checkpoints/step_8 --to consolidated --out c1.h5", &err) == 0,
                  err);
  CHECK(err.find("convert: read") != std::string::npos);  // the progress bar
  REQUIRE_MESSAGE(f.run(0, "convert --checkpoint c1.h5 --to ep=4 --out ep4", &err) == 0, err);
  for (int r = 0; r < 4; ++r) CHECK(fs::is_regular_file(f.dir / "ep4" / ("experts_" + std::to_string(r) + ".h5")));
  REQUIRE_MESSAGE(f.run(0, "convert --checkpoint ep4 --to consolidated --out c2.h5", &err) == 0, err);

  auto a = all_datasets(f.dir / "c1.h5"), b = all_datasets(f.dir / "c2.h5");
  REQUIRE(a.size() == 3 * 16);  // 16 parameters (4 expert tensors of (E, ...)) x value, adam_m, adam_v
  for (const auto& entry : a) {
    const std::string& name = entry.first;  // CAPTURE is a lambda: no structured binding
    const auto& v = entry.second;
    CAPTURE(name);
    REQUIRE(b.count(name) == 1);
    CHECK(v == b.at(name));
  }
  // The consolidated expert moments are the sharded ones (expert 3 lives in experts_1.h5 of the
  // ep=2 save), and they are not zero: a resharding that dropped them would show here.
  auto shard = all_datasets(f.dir / "ref2/checkpoints/step_8/experts_1.h5");
  const auto& m_full = a.at("adam_m/layers.1.moe.experts.w2");  // (E, C, H)
  const auto& m3 = shard.at("experts/3/adam_m/layers.1.moe.experts.w2");
  REQUIRE(m_full.size() == 4 * m3.size());
  CHECK(std::vector<float>(m_full.end() - long(m3.size()), m_full.end()) == m3);
  double mass = 0;
  for (float x : m3) mass += std::abs(x);
  CHECK(mass > 0);
  // The converted ep=4 checkpoint resumes (np=1) into the same losses as the uninterrupted run.
  REQUIRE_MESSAGE(f.run(0, "train --data data --run-dir from_ep4 " + kModel + " --grad-accum 4 --resume ep4", &err) == 0,
                  err);
  check_continues(f.losses("ref2"), f.losses("from_ep4"), 9, 1e-5);
}

TEST_CASE("convert: safetensors parses back to the consolidated data; eval reads checkpoints and files") {
  Fixture& f = fixture();
  require_refs(f);
  std::string err;
  REQUIRE_MESSAGE(f.run(0, "convert --checkpoint ref2/checkpoints/latest --to consolidated --no-optimizer --out w.h5",
                        &err) == 0,
                  err);
  REQUIRE_MESSAGE(f.run(0, "convert --checkpoint ref2/checkpoints/latest --to safetensors --out w.safetensors", &err) ==
                      0,
                  err);
  auto w = all_datasets(f.dir / "w.h5");
  CHECK(w.size() == 16);  // --no-optimizer: weights only

  const std::string st = slurp(f.dir / "w.safetensors");
  REQUIRE(st.size() > 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(st[size_t(i)]);
  REQUIRE(8 + n <= st.size());
  CHECK(n % 8 == 0);
  const Json h = anyk::test::parse_json(st.substr(8, n), "the safetensors header");
  REQUIRE(h.is_object());
  CHECK(h.at("__metadata__").at("experts") == "4");
  const size_t data0 = 8 + n;
  int64_t expect_begin = 0, tensors = 0;
  for (const auto& item : h.items()) {  // in file order
    const std::string name = item.key();  // CAPTURE is a lambda: no structured binding
    const auto& t = item.value();
    if (name == "__metadata__") continue;
    CAPTURE(name);
    CHECK(t.at("dtype") == "F32");
    int64_t numel = 1;
    for (const Json& d : t.at("shape")) numel *= d.get<int64_t>();
    REQUIRE(t.at("data_offsets").size() == 2);
    const int64_t b = t.at("data_offsets").at(0).get<int64_t>(), e = t.at("data_offsets").at(1).get<int64_t>();
    CHECK(b == expect_begin);  // contiguous, in order
    CHECK(e - b == 4 * numel);
    expect_begin = e;
    REQUIRE(data0 + size_t(e) <= st.size());
    std::vector<float> v(static_cast<size_t>(numel));
    std::memcpy(v.data(), st.data() + data0 + b, size_t(4 * numel));
    REQUIRE(w.count(name) == 1);
    CHECK(v == w.at(name));
    ++tensors;
  }
  CHECK(tensors == 16);
  CHECK(data0 + size_t(expect_begin) == st.size());
  CHECK(h.at("layers.0.moe.experts.w13").at("shape").at(0) == 4);  // every expert: (E, 2H, C)

  // eval: the run dir (model.h5), the final checkpoint and the consolidated file agree exactly.
  std::vector<std::string> outs;
  for (const std::string& src : {std::string("--run-dir ref2"), std::string("--checkpoint latest --run-dir ref2"),
                                 std::string("--weights w.h5")}) {
    CAPTURE(src);
    REQUIRE_MESSAGE(f.run(0, "eval " + src + " --data data --k 2 --eval-windows 8 --threads 1", &err) == 0, err);
    const std::string& out = f.last_out;
    REQUIRE(out.find("K=2 |") != std::string::npos);
    outs.push_back(out.substr(out.find("K=2 |")));
  }
  CHECK(outs[0] == outs[1]);
  CHECK(outs[0] == outs[2]);
}

TEST_CASE("damaged or mismatched checkpoints are refused with one line naming the file and dataset") {
  Fixture& f = fixture();
  require_refs(f);
  auto copy = [&](const std::string& name) {
    fs::remove_all(f.dir / name);
    fs::copy(f.dir / "ref2/checkpoints/step_8", f.dir / name);
    return f.dir / name;
  };
  auto refused = [&](const std::string& ckpt, const std::string& model, std::vector<std::string> needles) {
    CAPTURE(ckpt);
    std::string err;
    fs::remove_all(f.dir / "refused");
    const int rc = f.run(0, "train --data data --run-dir refused " + (model.empty() ? kModel : model) +
                                " --grad-accum 4 --resume " + ckpt,
                         &err);
    CHECK(rc == 1);  // the checkpoint does not fit this run: a run-time failure
    CHECK(std::count(err.begin(), err.end(), '\n') == 1);
    for (const auto& s : needles) CHECK_MESSAGE(err.find(s) != std::string::npos, "'" << s << "' not in: " << err);
    CHECK(!fs::exists(f.dir / "refused"));  // refused before any file was written
  };

  {  // truncated shard
    fs::path d = copy("bad_trunc");
    fs::resize_file(d / "experts_1.h5", fs::file_size(d / "experts_1.h5") / 2);
    refused("bad_trunc", "", {"bad_trunc/experts_1.h5", "truncated"});
  }
  {  // one flipped bit in the data of a dense parameter's second moment
    fs::path d = copy("bad_flip");
    haddr_t off;
    {
      h5::Handle file = h5::open_file((d / "meta.h5").string());
      h5::Handle ds(H5Dopen2(file.id, "adam_v/layers.0.attn.wqkv", H5P_DEFAULT), H5Dclose);
      off = H5Dget_offset(ds.id);
    }
    REQUIRE(off != HADDR_UNDEF);
    std::fstream io(d / "meta.h5", std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(std::streamoff(off + 41));
    char byte = 0;
    io.read(&byte, 1);
    byte ^= 0x04;
    io.seekp(std::streamoff(off + 41));
    io.write(&byte, 1);
    io.close();
    refused("bad_flip", "", {"bad_flip/meta.h5", "adam_v/layers.0.attn.wqkv", "checksum"});
  }
  {  // missing shard
    fs::path d = copy("bad_missing");
    fs::remove(d / "experts_1.h5");
    refused("bad_missing", "", {"bad_missing/experts_1.h5", "missing shard"});
  }
  {  // unknown format version
    fs::path d = copy("bad_version");
    {
      h5::Handle file(H5Fopen((d / "meta.h5").string().c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose);
      REQUIRE(file.id >= 0);
      h5::Handle a(H5Aopen(file.id, "version", H5P_DEFAULT), H5Aclose);
      const int64_t v = 99;
      REQUIRE(H5Awrite(a.id, H5T_NATIVE_INT64, &v) >= 0);
    }
    refused("bad_version", "", {"bad_version/meta.h5", "version 99"});
  }
  // A different model shape: the field and both values are named.
  refused("ref2/checkpoints/step_8", model_with("--experts 4", "--experts 8"),
          {"step_8/meta.h5", "--experts 4", "--experts 8"});
  refused("ref2/checkpoints/step_8", model_with("--layers 2", "--layers 3"), {"step_8/meta.h5", "--layers 2", "--layers 3"});
  // Shards from another checkpoint mixed in.
  {
    fs::path d = copy("bad_mixed");
    fs::copy_file(f.dir / "ref2/checkpoints/step_4/experts_0.h5", d / "experts_0.h5",
                  fs::copy_options::overwrite_existing);
    refused("bad_mixed", "", {"bad_mixed/experts_0.h5", "another checkpoint"});
  }
}
