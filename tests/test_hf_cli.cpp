// The Hugging Face Mixtral directory through the anyk binary (issue 22): train -> `convert --to hf`
// -> `eval --weights DIR` gives the run's own val losses bit for bit at every K, and
// `train --init-weights DIR` runs exactly as `--init-weights model.h5` (same losses, same final
// sweep); and the checks that refuse a source before any file is written: a --resume over data of
// another tokenizer, --init-weights from a Mixtral directory of another tokenizer or other sizes.
// Each refusal is one `anyk: error:` line and a non-zero exit. io/hf.cpp's in-process round trip
// is tests/test_hf.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.h"

using namespace anyk::test;
namespace fs = std::filesystem;

namespace {

// The first n bytes of the fortunes corpus (files sorted by name, *.dat and *.u8 skipped), as
// tests/test_sp_tokenizer.cpp reads it.
std::string fortunes(size_t n) {
  const fs::path dir = "/usr/share/games/fortunes";
  REQUIRE_MESSAGE(fs::is_directory(dir), "the fortunes corpus is missing: run tools/deps.sh");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && !e.is_symlink() && e.path().extension() != ".dat" && e.path().extension() != ".u8")
      files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::string all;
  for (const fs::path& f : files) {
    all += slurp(f);
    if (all.size() >= n) break;
  }
  REQUIRE(all.size() >= n);
  return all.substr(0, n);
}

// The tiny model of every run here (its steps and run dir added per run).
const std::string kModel =
    " --layers 2 --dim 16 --heads 2 --experts 4 --expert-hidden 16 --seq-len 16 --batch 4 --lr 0.01 --warmup 0 "
    "--k-strategy layer --k-min 1 --k-max 4 --eval-every 0 --eval-windows 8 --log-every 1 --threads 1";

// val_loss of the final K-sweep of a run, K = 1..E in order (metrics.jsonl "sweep" records).
std::vector<double> sweep_of(const fs::path& run) { return numbers(read_jsonl(run / "metrics.jsonl", "sweep"), "val_loss"); }

// The rejected command's contract: non-zero exit, one error line with every needle.
void expect_refused(const RunResult& r, std::initializer_list<std::string> needles) {
  INFO(r.command);
  CHECK(r.rc != 0);
  check_one_error_line(r.err, needles);
}

}  // namespace

TEST_CASE("train -> convert --to hf -> eval --weights DIR and train --init-weights DIR: the same losses bit for bit") {
  TempDir tmp("test_hf_cli");
  const fs::path d = tmp.path;
  auto sh = [&](const std::string& args) { return run_anyk(args, {.cwd = d, .timeout_s = 300}); };
  std::ofstream(d / "corpus.txt", std::ios::binary) << fortunes(60000);
  RunResult r = sh("prepare --input corpus.txt --out data");
  REQUIRE_MESSAGE(r.rc == 0, r.err);

  r = sh("train --data data --run-dir run --steps 30" + kModel);
  REQUIRE_MESSAGE(r.rc == 0, r.out << r.err);
  const std::vector<double> trained = sweep_of(d / "run");
  REQUIRE(trained.size() == 4);
  r = sh("convert --checkpoint run --to hf --out hf");
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  REQUIRE(fs::is_regular_file(d / "hf/config.json"));
  REQUIRE(fs::is_regular_file(d / "hf/model.safetensors"));

  // eval of the Mixtral directory: the training run's final sweep, every K, bit for bit (the JSON
  // numbers are the shortest text that reads back to the same double).
  r = sh("eval --weights hf --data data --sweep --batch 4 --eval-windows 8 --threads 1 --json hf.json");
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const Json hf = read_json(d / "hf.json");
  REQUIRE(hf["results"].size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    INFO("K=" << i + 1);
    CHECK(hf["results"][i]["k"][0].get<int>() == int(i + 1));
    CHECK(number(hf["results"][i], "val_loss") == trained[i]);
  }
  // The same command on the run's own model.h5 (the reference eval) agrees as well.
  r = sh("eval --weights run/model.h5 --data data --sweep --batch 4 --eval-windows 8 --threads 1 --json h5.json");
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(slurp(d / "h5.json") == slurp(d / "hf.json"));

  // Training on from the Mixtral directory is training on from model.h5: every logged loss and
  // the final sweep are the same doubles.
  r = sh("train --data data --run-dir from_h5 --steps 3 --init-weights run/model.h5" + kModel);
  REQUIRE_MESSAGE(r.rc == 0, r.out << r.err);
  r = sh("train --data data --run-dir from_hf --steps 3 --init-weights hf" + kModel);
  REQUIRE_MESSAGE(r.rc == 0, r.out << r.err);
  const std::vector<double> loss_h5 = numbers(read_jsonl(d / "from_h5/metrics.jsonl", "train"), "loss");
  const std::vector<double> loss_hf = numbers(read_jsonl(d / "from_hf/metrics.jsonl", "train"), "loss");
  REQUIRE(loss_h5.size() == 3);
  CHECK(loss_hf == loss_h5);
  CHECK(sweep_of(d / "from_hf") == sweep_of(d / "from_h5"));
  // A negative control: the run started from scratch (no --init-weights) differs, so the equality
  // above is the weights' doing.
  r = sh("train --data data --run-dir scratch --steps 3" + kModel);
  REQUIRE_MESSAGE(r.rc == 0, r.out << r.err);
  CHECK(numbers(read_jsonl(d / "scratch/metrics.jsonl", "train"), "loss") != loss_h5);
}

TEST_CASE("--resume over data of another tokenizer, --init-weights from a Mixtral directory of another tokenizer "
          "or other sizes: one error line, non-zero exit") {
  TempDir tmp("test_hf_cli");
  const fs::path d = tmp.path;
  auto sh = [&](const std::string& args) { return run_anyk(args, {.cwd = d, .timeout_s = 300}); };
  std::ofstream(d / "corpus.txt", std::ios::binary) << fortunes(100000);
  RunResult r = sh("prepare --input corpus.txt --out data_sp --tokenizer sp --vocab-size 400");
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  REQUIRE(sh("prepare --input corpus.txt --out data_b").rc == 0);
  // The vocab is 400 for every run, so the shapes agree and only the tokenizer differs.
  const std::string model = kModel + " --vocab 400";
  r = sh("train --data data_sp --run-dir run --steps 4" + model);
  REQUIRE_MESSAGE(r.rc == 0, r.out << r.err);
  REQUIRE(fs::is_regular_file(d / "run/checkpoints/latest"));
  const std::string latest = slurp(d / "run/checkpoints/latest");

  // --resume latest with byte data: the checkpoint's config says SentencePiece.
  r = sh("train --data data_b --run-dir run --resume latest --steps 8" + model);
  expect_refused(r, {"tokenizer mismatch", "data_b", "bytes", "the checkpoint"});
  CHECK(slurp(d / "run/checkpoints/latest") == latest);  // nothing trained, nothing saved

  // --init-weights from the run's Mixtral directory (which carries tokenizer.model) on byte data.
  REQUIRE(sh("convert --checkpoint run --to hf --out hf_sp").rc == 0);
  REQUIRE(fs::is_regular_file(d / "hf_sp/tokenizer.model"));
  r = sh("train --data data_b --run-dir run2 --steps 2 --init-weights hf_sp" + model);
  expect_refused(r, {"tokenizer mismatch", "--init-weights", "hf_sp", "bytes"});
  CHECK_FALSE(fs::exists(d / "run2"));
  // The same directory on its own tokenizer's data is accepted (the check refuses only a mismatch).
  r = sh("train --data data_sp --run-dir run3 --steps 2 --init-weights hf_sp" + model);
  CHECK_MESSAGE(r.rc == 0, r.err);

  // --init-weights from a Mixtral directory of other sizes: --dim 16 saved, 32 asked.
  std::string other = model;
  other.replace(other.find("--dim 16"), 8, "--dim 32");
  r = sh("train --data data_sp --run-dir run4 --steps 2 --init-weights hf_sp" + other);
  expect_refused(r, {"config mismatch", "hf_sp/config.json", "--dim 16", "--dim 32"});
  CHECK_FALSE(fs::exists(d / "run4"));
}
