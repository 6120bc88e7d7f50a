// The `anyk` command line as a user meets it: bad input gives one `anyk: error:` line naming the
// offending option or value, a non-zero exit and no run directory; --help describes the commands.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

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

TEST_CASE("cli: --data FILE and --weights of the wrong format say what is wrong; model.h5 carries its step and seed") {
  TempDir t;
  const fs::path data = make_data(t);
  const fs::path run_dir = t.path / "run";
  // --data naming a file: "is a file", not "does not exist"; a shard's hint names its directory.
  const fs::path text = t.path / "fox.txt";
  Result d1 = run("train --data " + text.string() + " --run-dir " + run_dir.string() + kTiny, t.path);
  expect_rejected(d1, run_dir, {"--data " + text.string() + " is a file", "a data directory is expected",
                                "anyk prepare --input " + text.string()});
  CHECK(d1.err.find("does not exist") == std::string::npos);
  Result d2 = run("train --data " + (data / "train.bin").string() + " --run-dir " + run_dir.string() + kTiny, t.path);
  expect_rejected(d2, run_dir, {"is a file", "hint: pass its directory, --data " + data.string()});
  Result d3 = run("train --data " + (t.path / "nodata").string() + " --run-dir " + run_dir.string() + kTiny, t.path);
  expect_rejected(d3, run_dir, {"--data " + (t.path / "nodata").string() + " does not exist", "anyk prepare"});

  Result r = run("train --data " + data.string() + " --run-dir " + run_dir.string() + kTinyNoSteps +
                     " --steps 3 --seed 7 --eval-windows 2",
                 t.path);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  Result e1 = run("eval --data " + text.string() + " --run-dir " + run_dir.string() + " --k 1", t.path);
  CHECK(e1.rc != 0);
  anyk::test::check_one_error_line(e1.err, {"--data " + text.string() + " is a file"});

  // model.h5 -> safetensors: the metadata holds the run's real step (3) and seed (7), not 0.
  const fs::path st = t.path / "m.safetensors";
  Result c = run("convert --checkpoint " + (run_dir / "model.h5").string() + " --to safetensors --out " + st.string(),
                 t.path);
  REQUIRE_MESSAGE(c.rc == 0, c.err);
  CHECK(c.out.find("(step 3,") != std::string::npos);
  const std::string bytes = slurp(st);
  REQUIRE(bytes.size() > 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(uint8_t(bytes[size_t(i)])) << (8 * i);
  const auto meta = anyk::test::parse_json(bytes.substr(8, size_t(n)), "the safetensors header").at("__metadata__");
  CHECK(meta.at("step").get<std::string>() == "3");
  CHECK(meta.at("seed").get<std::string>() == "7");

  // eval --weights of a safetensors file: the wrong format, not "was not completely written".
  Result w1 = run("eval --weights " + st.string() + " --data " + data.string() + " --k 1", t.path);
  CHECK(w1.rc != 0);
  anyk::test::check_one_error_line(w1.err, {st.string() + " is a safetensors file", "HDF5", "hint:"});
  CHECK(w1.err.find("completely written") == std::string::npos);
  // Any other non-HDF5 file: not an anyk weights file.
  const fs::path junk = t.path / "junk.h5";
  std::ofstream(junk) << "these are not weights";
  Result w2 = run("eval --weights " + junk.string() + " --data " + data.string() + " --k 1", t.path);
  CHECK(w2.rc != 0);
  anyk::test::check_one_error_line(w2.err, {junk.string() + " is not an HDF5 file", "not an anyk weights"});
  // An HDF5 file cut short is still "not completely written".
  const std::string h5 = slurp(run_dir / "model.h5");
  const fs::path cut = t.path / "cut.h5";
  std::ofstream(cut, std::ios::binary) << h5.substr(0, 64);
  Result w3 = run("eval --weights " + cut.string() + " --data " + data.string() + " --k 1", t.path);
  CHECK(w3.rc != 0);
  anyk::test::check_one_error_line(w3.err, {cut.string(), "truncated or corrupt", "not completely written"});
}

namespace {
// The "loss" value of metrics.jsonl's train record of `step`, as written ("" if none).
std::string train_loss_at(const fs::path& metrics, int step) {
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"type\": \"train\"") == std::string::npos ||
        line.find("\"step\": " + std::to_string(step) + ",") == std::string::npos)
      continue;
    const size_t at = line.find("\"loss\": ");
    return at == std::string::npos ? "" : line.substr(at, line.find(',', at) - at);
  }
  return "";
}
}  // namespace

TEST_CASE("cli: prepare --shard-tokens; train reads the shards, resumes bit-identically, refuses a changed shard") {
  TempDir t;
  fs::path text = t.path / "fox.txt";
  {
    std::ofstream o(text);
    for (int i = 0; i < 900; ++i) o << "the quick brown fox jumps over the lazy dog " << i << ". ";
  }
  const fs::path data = t.path / "shards";
  Result prep = run("prepare --input " + text.string() + " --out " + data.string() + " --shard-tokens 9000", t.path);
  REQUIRE_MESSAGE(prep.rc == 0, prep.err);
  CHECK_FALSE(fs::exists(data / "train.bin"));
  CHECK_FALSE(fs::exists(data / "val.bin"));
  CHECK(fs::exists(data / "train_000000.bin"));
  CHECK(fs::exists(data / "train_000004.bin"));
  CHECK_FALSE(fs::exists(data / "train_000005.bin"));
  CHECK(fs::exists(data / "val_000000.bin"));
  CHECK(run("prepare --help", t.path).out.find("--shard-tokens") != std::string::npos);
  CHECK(run("train --help", t.path).out.find("train_*.bin") != std::string::npos);

  const fs::path a = t.path / "a", b = t.path / "b";
  Result full = run("train --data " + data.string() + " --run-dir " + a.string() + kTinyNoSteps +
                        " --steps 4 --log-every 1 --save-every 2 --eval-windows 4",
                    t.path);
  REQUIRE_MESSAGE(full.rc == 0, full.err);
  CHECK(full.out.find("(5 + 1 shards, mapped)") != std::string::npos);
  // Resume at step 2 in another run dir: the same losses after it, bit for bit.
  fs::create_directories(b / "checkpoints");
  fs::copy(a / "checkpoints" / "step_2", b / "checkpoints" / "step_2", fs::copy_options::recursive);
  Result resumed = run("train --data " + data.string() + " --run-dir " + b.string() + kTinyNoSteps +
                           " --steps 4 --log-every 1 --eval-windows 4 --resume " + (b / "checkpoints" / "step_2").string(),
                       t.path);
  REQUIRE_MESSAGE(resumed.rc == 0, resumed.err);
  for (int s : {3, 4}) {
    INFO("step " << s);
    CHECK_FALSE(train_loss_at(a / "metrics.jsonl", s).empty());
    CHECK(train_loss_at(b / "metrics.jsonl", s) == train_loss_at(a / "metrics.jsonl", s));
  }
  // A shard that changed size under the run: one line naming it, nothing trained.
  {
    const fs::path last = data / "train_000004.bin";
    fs::resize_file(last, fs::file_size(last) - 200);
    std::fstream f(last, std::ios::binary | std::ios::in | std::ios::out);
    int32_t n = 0;
    f.seekg(8);
    f.read(reinterpret_cast<char*>(&n), 4);
    n -= 100;
    f.seekp(8);
    f.write(reinterpret_cast<const char*>(&n), 4);
  }
  Result changed = run("train --data " + data.string() + " --run-dir " + a.string() + kTinyNoSteps +
                           " --steps 6 --resume latest",
                       t.path);
  CHECK(changed.rc != 0);
  anyk::test::check_one_error_line(changed.err, {"training shard 4 train_000004.bin holds",
                                                 "checkpoints/step_4/meta.h5 was written when",
                                                 "hint: resume over the data the run started with"});
}

// ---- the CLI convention of docs/cli.md ---------------------------------------------------------

namespace {

// The comma-separated names after `after` up to the first ';', ')' or newline in text.
std::vector<std::string> names_after(const std::string& text, const std::string& after) {
  std::vector<std::string> names;
  const size_t at = text.find(after);
  if (at == std::string::npos) return names;
  std::string word;
  for (size_t i = at + after.size(); i <= text.size(); ++i) {
    const char c = i < text.size() ? text[i] : ';';
    if (c == ',' || c == ';' || c == ')' || c == '\n') {
      const size_t b = word.find_first_not_of(' '), e = word.find_last_not_of(' ');
      if (b != std::string::npos) names.push_back(word.substr(b, e - b + 1));
      word.clear();
      if (c != ',') break;
    } else {
      word += c;
    }
  }
  return names;
}

// The long option names (without --) of a Program_options help text: each line's leading option.
std::vector<std::string> options_of_help(const std::string& help) {
  std::vector<std::string> names;
  std::istringstream in(help);
  const std::regex opt("^  (?:-[a-z] \\[ )?--([a-z0-9-]+)");
  std::smatch m;
  for (std::string line; std::getline(in, line);)
    if (std::regex_search(line, m, opt)) names.push_back(m[1].str());
  return names;
}

}  // namespace

TEST_CASE("cli convention: an error is one line without source paths; --debug or ANYK_DEBUG=1 adds the location") {
  TempDir t;
  const fs::path data = make_data(t);
  const fs::path run_dir = t.path / "run";
  const std::string base = "train --data " + data.string() + " --run-dir " + run_dir.string() + kTiny;
  const Result plain = run(base + " --k-max 7", t.path);
  anyk::test::check_one_error_line(plain.err, {"--k-max 7", "(hint: "});
  CHECK(std::regex_match(plain.err, std::regex("anyk: error: [^\\n]+ \\(hint: [^\\n]+\\)\\n")));
  CHECK(plain.err.find(".cpp:") == std::string::npos);
  CHECK(plain.err.find(".h:") == std::string::npos);
  // A run-time failure (a missing data dir) is written the same way.
  const Result missing = run("train --data " + (t.path / "none").string() + " --run-dir " + run_dir.string() + kTiny,
                             t.path);
  anyk::test::check_one_error_line(missing.err, {"does not exist", "(hint: "});
  CHECK(missing.err.find(".cpp:") == std::string::npos);
  // --debug (anywhere on the line) and ANYK_DEBUG=1 name the check's source line, still one line.
  for (const Result& d : {run(base + " --k-max 7 --debug", t.path), run("--debug " + base + " --k-max 7", t.path),
                          anyk::test::run_anyk(base + " --k-max 7", {.cwd = t.path, .env = {"ANYK_DEBUG=1"}})}) {
    anyk::test::check_one_error_line(d.err, {"--k-max 7", "(hint: "});
    CHECK(std::regex_search(d.err, std::regex("\\) \\[[^\\]]*launch/[a-z_]+\\.cpp:[0-9]+\\]\\n$")));
    CHECK(d.rc == plain.rc);
  }
  CHECK_FALSE(fs::exists(run_dir));
}

TEST_CASE("cli convention: exit status 2 for a usage error, 1 for a run-time failure, 0 for success") {
  TempDir t;
  const fs::path data = make_data(t);
  const fs::path run_dir = t.path / "run";
  const std::string base = "train --data " + data.string() + " --run-dir " + run_dir.string() + kTiny;
  struct Case {
    std::string args;
    int rc;
  };
  const std::vector<Case> cases = {
      {"", 2},                                                       // no command
      {"fly", 2},                                                    // unknown command
      {base + " --frobnicate 3", 2},                                 // unknown option
      {base + " --k-max 7", 2},                                      // a value out of range
      {"train --data " + data.string() + kTiny, 2},                  // a required option missing
      {base + " --steps abc", 2},                                    // not a number
      {base + " --k-strategy sometimes", 2},                         // not one of the choices
      {base + " --overwrite --resume latest", 2},                    // options that exclude each other
      {"prepare --input x --out y --val-fraction 1.5", 2},
      {"eval --run-dir " + run_dir.string() + " --data " + data.string(), 2},  // no K setting
      {"convert --checkpoint x --to ep=0 --out y", 2},
      {"train --data " + (t.path / "none").string() + " --run-dir " + run_dir.string() + kTiny, 1},  // no such data
      {"eval --run-dir " + (t.path / "norun").string() + " --data " + data.string() + " --k 1", 1},  // no such run
      {"convert --checkpoint " + (t.path / "nockpt").string() + " --to safetensors --out y.st", 1},
      {"prepare --input " + (t.path / "notext").string() + " --out " + (t.path / "d2").string(), 1},
      {"--version", 0},
      {"train --help", 0},
  };
  for (const Case& c : cases) {
    INFO("anyk " << c.args);
    const Result r = run(c.args, t.path);
    CHECK(r.rc == c.rc);
    if (c.rc == 2 && !c.args.empty()) anyk::test::check_one_error_line(r.err, {});
    if (c.rc == 1) anyk::test::check_one_error_line(r.err, {});
  }
  CHECK_FALSE(fs::exists(run_dir));
}

TEST_CASE("cli convention: --help names every command, strategy and train option, with no float noise") {
  TempDir t;
  const Result top = run("--help", t.path);
  REQUIRE(top.rc == 0);
  // The commands as the dispatcher knows them: its unknown-command hint lists its table.
  const std::vector<std::string> commands = names_after(run("fly", t.path).err, "commands are ");
  REQUIRE(commands.size() >= 6);
  for (const std::string& c : commands) {
    INFO("command " << c);
    CHECK(top.out.find("\n  " + c + " ") != std::string::npos);
    const Result h = run(c + " --help", t.path);
    CHECK(h.rc == 0);
    CHECK(h.out.find("--help") != std::string::npos);
    // Program_options prints a double default with 17 digits unless given its text form.
    CHECK_FALSE(std::regex_search(h.out, std::regex("[0-9]\\.[0-9]*(0000000|9999999)")));
  }
  CHECK_FALSE(std::regex_search(top.out, std::regex("[0-9]\\.[0-9]*(0000000|9999999)")));
  CHECK(run("prepare --help", t.path).out.find("(=0.05)") != std::string::npos);
  // The strategies as the K schedule knows them: its error for an unknown name lists them.
  const Result bad = run("train --k-strategy sometimes --data x --run-dir y", t.path);
  const std::vector<std::string> strategies = names_after(bad.err, "valid names are ");
  REQUIRE(strategies.size() >= 7);
  for (const std::string& s : strategies) CHECK_MESSAGE(top.out.find(s) != std::string::npos, "strategy " << s);
  // Every option of train --help (device, profile, init-weights, ... and any added later).
  const std::vector<std::string> train_opts = options_of_help(run("train --help", t.path).out);
  REQUIRE(train_opts.size() >= 40);
  for (const std::string& o : train_opts) {
    if (o == "help") continue;
    CHECK_MESSAGE(std::regex_search(top.out, std::regex("--" + o + "\\b")), "--" << o);
  }
}

TEST_CASE("cli convention: warnings and notes on stderr, results on stdout; --top-p is --expert-top-p") {
  TempDir t;
  const fs::path data = make_data(t);
  const fs::path run_dir = t.path / "run";
  // --top-p (the deprecated name) 0.1 <= 1/experts = 0.25: the trainer warns that top_p is fixed K.
  const Result r = run("train --data " + data.string() + " --run-dir " + run_dir.string() + kTiny +
                           " --k-strategy top_p --k-min 1 --k-max 3 --top-p 0.1 --eval-windows 2",
                       t.path);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(r.err.find("anyk: note: --top-p is deprecated, use --expert-top-p") != std::string::npos);
  CHECK(r.err.find("anyk: warning: --expert-top-p 0.1 <= 1/experts") != std::string::npos);
  CHECK(r.out.find("warning") == std::string::npos);
  CHECK(r.out.find("note:") == std::string::npos);
  CHECK(r.out.find("K-sweep on") != std::string::npos);  // the result is on stdout
  CHECK(slurp(run_dir / "train.log").find("anyk: warning: --expert-top-p") != std::string::npos);
  const std::string ini = slurp(run_dir / "config.ini");
  CHECK(ini.find("\nexpert-top-p = 0.1\n") != std::string::npos);
  CHECK(ini.find("\ntop-p") == std::string::npos);
  // An older config file's `top-p =` key still reads, under the new name, without a note.
  const fs::path old_cfg = t.path / "old.ini";
  std::ofstream(old_cfg) << "top-p = 0.2\n";
  const fs::path run2 = t.path / "run2";
  const Result r2 = run("train --config " + old_cfg.string() + " --data " + data.string() + " --run-dir " +
                            run2.string() + kTiny + " --k-strategy top_p --k-min 1 --k-max 3 --eval-windows 2",
                        t.path);
  REQUIRE_MESSAGE(r2.rc == 0, r2.err);
  CHECK(slurp(run2 / "config.ini").find("\nexpert-top-p = 0.2\n") != std::string::npos);
  CHECK(r2.err.find("deprecated") == std::string::npos);
  CHECK(r2.err.find("anyk: warning: --expert-top-p 0.2 <= 1/experts") != std::string::npos);
}
