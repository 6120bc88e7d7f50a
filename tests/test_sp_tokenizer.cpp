// The SentencePiece tokenizer (data/sp_tokenizer.h, launch/tokenizer.h): a small BPE model trained
// on the fortunes corpus round-trips any text (byte fallback) and prints as SentencePiece decodes;
// `anyk prepare --tokenizer sp` writes shards whose ids decode back to the corpus; the tokenizer
// travels into the run and its exports; data, run and weights with different tokenizers are
// refused in one line; generate prints text, not '?'. llama.cpp's tokenisation of the same model
// is checked against anyk's by tools/llama_test.sh.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "data/shard.h"
#include "data/sp_tokenizer.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;
namespace fs = std::filesystem;

namespace {

// The first n bytes of the fortunes corpus (files sorted by name, *.dat and *.u8 links skipped),
// from byte `from` on.
std::string fortunes(size_t from, size_t n) {
  const fs::path dir = "/usr/share/games/fortunes";
  REQUIRE_MESSAGE(fs::is_directory(dir), "the fortunes corpus is missing: run tools/deps.sh");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && !e.is_symlink() && e.path().extension() != ".dat" && e.path().extension() != ".u8")
      files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::string all;
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    all += std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (all.size() >= from + n) break;
  }
  REQUIRE(all.size() >= from + n);
  return all.substr(from, n);
}

// Texts a tokenizer must survive: spaces (leading, trailing, runs), tabs, CR, newlines, digits,
// punctuation, accents, other scripts, emoji and characters the training text never held.
const std::vector<std::string> kVaried = {
    "plain ascii", "  two leading spaces", "trailing spaces   ", "tabs\there\t\tand there",
    "don't, it's, we'll", "3.14159 + 2,718 = 1e10; 1,000,000 (100%)", "!@#$%^&*()_+-=[]{}|;:,.<>?/~`",
    "caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9\x65", "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82",
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "emoji \xf0\x9f\x98\x80 end", "carriage\rreturn",
    "two\nlines\n\nand a blank one", "\n\n", " ", "\t\t-- Mark Twain\n", "e\xcc\x81 combining"};

// The tokens of an llm.c shard, read here byte by byte (header: 256 int32, magic 20240520,
// version 1, count; then uint16 little-endian tokens).
std::vector<int> shard_tokens(const fs::path& p) {
  const std::string b = slurp(p);
  REQUIRE(b.size() >= 1024);
  auto i32 = [&](size_t i) {
    return int32_t(uint32_t(uint8_t(b[4 * i])) | uint32_t(uint8_t(b[4 * i + 1])) << 8 |
                   uint32_t(uint8_t(b[4 * i + 2])) << 16 | uint32_t(uint8_t(b[4 * i + 3])) << 24);
  };
  REQUIRE(i32(0) == 20240520);
  REQUIRE(i32(1) == 1);
  const size_t n = size_t(i32(2));
  REQUIRE(b.size() == 1024 + 2 * n);
  std::vector<int> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = int(uint8_t(b[1024 + 2 * i])) | int(uint8_t(b[1025 + 2 * i])) << 8;
  return t;
}

}  // namespace

TEST_CASE("train_sp: a 1000-piece BPE model of fortunes round-trips any text and compresses held-out text") {
  TempDir tmp("test_sp_tokenizer");
  const std::string train = fortunes(0, 300000), held_out = fortunes(300000, 50000);
  data::train_sp(train, 1000, tmp.file("m.model"));
  const data::SpTokenizer sp(tmp.file("m.model"));
  CHECK(sp.vocab() == 1000);
  std::vector<std::string> texts = kVaried;
  texts.push_back(held_out);
  for (const std::string& s : texts) {
    const std::vector<int> ids = sp.encode(s);
    CHECK_MESSAGE(sp.decode(ids) == s, "SentencePiece's decode of \"" << s << "\"");
    std::string printed;
    for (int id : ids) {
      REQUIRE(id >= 0);
      REQUIRE(id < sp.vocab());
      printed += sp.token_text(id);
    }
    CHECK_MESSAGE(printed == s, "token_text of \"" << s << "\"");
  }
  // Compression on text the model did not see (bytes per token; 1 for the byte vocabulary).
  const double bpt = double(held_out.size()) / double(sp.encode(held_out).size());
  MESSAGE("held-out fortunes: " << bpt << " bytes per token");
  CHECK(bpt > 2.0);
  // llama.cpp's token types: 256 byte pieces, unk, bos and eos as unknown and control.
  int bytes = 0;
  for (int i = 0; i < sp.vocab(); ++i) bytes += sp.token_type(i) == 6;
  CHECK(bytes == 256);
  CHECK(sp.token_type(sp.unk_id()) == 2);
  CHECK(sp.token_type(sp.bos_id()) == 3);
  CHECK(sp.token_type(sp.eos_id()) == 3);
  CHECK(sp.piece(sp.encode("\xe6\x97\xa5")[0]) == "<0xE6>");  // byte fallback for an unseen character
  CHECK(sp.hash().rfind("fnv1a64:", 0) == 0);
  CHECK(sp.hash() == data::tokenizer_hash(tmp.file("m.model")));
  CHECK(data::dir_tokenizer_hash(tmp.path.string()) == "bytes");  // no tokenizer.model there
}

TEST_CASE("train_sp and SpTokenizer refuse in one line") {
  TempDir tmp("test_sp_tokenizer");
  CHECK_THROWS_WITH_AS(data::train_sp("abc", 70000, tmp.file("m.model")), doctest::Contains("65535"), Error);
  std::ofstream(tmp.file("bad.model")) << "not a model";
  CHECK_THROWS_WITH_AS(data::SpTokenizer(tmp.file("bad.model")), doctest::Contains("is not a SentencePiece model"),
                       Error);
  CHECK_THROWS_WITH_AS(data::SpTokenizer(tmp.file("none.model")), doctest::Contains("does not exist"), Error);
}

TEST_CASE("anyk prepare --tokenizer sp, train, generate, convert; mismatched tokenizers are refused") {
  TempDir tmp("test_sp_tokenizer");
  const fs::path d = tmp.path;
  auto sh = [&](const std::string& args) { return run_anyk(args, {.cwd = d, .timeout_s = 300}); };
  std::string text = fortunes(0, 150000);
  text.erase(std::remove(text.begin(), text.end(), '?'), text.end());  // then any '?' printed is a bug
  std::ofstream(d / "corpus.txt", std::ios::binary) << text;

  RunResult r = sh("prepare --input corpus.txt --out data_sp --tokenizer sp --vocab-size 800");
  REQUIRE_MESSAGE(r.rc == 0, r.out << r.err);
  const data::SpTokenizer sp((d / "data_sp/tokenizer.model").string());
  CHECK(sp.vocab() == 800);
  std::vector<int> ids;
  for (const char* split : {"train.bin", "val.bin"}) {
    const std::vector<int> t = shard_tokens(d / "data_sp" / split);
    ids.insert(ids.end(), t.begin(), t.end());
  }
  CHECK(sp.decode(ids) == text);  // the shards hold the corpus, every byte of it
  MESSAGE("prepare: " << text.size() << " bytes -> " << ids.size() << " tokens");
  CHECK(ids.size() * 3 < text.size() * 2);  // > 1.5 bytes per token
  REQUIRE(sh("prepare --input corpus.txt --out data_b").rc == 0);
  CHECK_FALSE(fs::exists(d / "data_b/tokenizer.model"));
  r = sh("prepare --input corpus.txt --out data_x --tokenizer sp");
  check_one_error_line(r.err, {"--vocab-size"});
  r = sh("prepare --input corpus.txt --out data_x --tokenizer corpus.txt");
  check_one_error_line(r.err, {"is not a SentencePiece model"});

  // anyk tokenize: SentencePiece's ids, line by line.
  std::ofstream(d / "lines.txt", std::ios::binary) << "Hello, world\ncaf\xc3\xa9 \xe6\x97\xa5 42\n";
  r = sh("tokenize --tokenizer data_sp/tokenizer.model --input lines.txt");
  REQUIRE(r.rc == 0);
  std::string want;
  for (const char* line : {"Hello, world", "caf\xc3\xa9 \xe6\x97\xa5 42"}) {
    std::string row;
    for (int id : sp.encode(line)) {
      if (!row.empty()) row += ' ';
      row += std::to_string(id);
    }
    want += row + "\n";
  }
  CHECK(r.out == want);

  const std::string model = " --steps 40 --layers 1 --dim 32 --heads 2 --experts 2 --expert-hidden 32 --seq-len 32 "
                            "--batch 8 --lr 0.01 --k-strategy fixed --k 1 --eval-every 0 --eval-windows 2 "
                            "--log-every 40 --threads 1";
  r = sh("train --data data_sp --run-dir run" + model);
  REQUIRE_MESSAGE(r.rc == 0, r.out << r.err);
  const std::string ini = slurp(d / "run/config.ini");
  CHECK(ini.find("tokenizer-hash = " + sp.hash()) != std::string::npos);
  CHECK(ini.find("vocab = 800") != std::string::npos);  // vocab 0 became the tokenizer's size
  CHECK(slurp(d / "run/tokenizer.model") == slurp(d / "data_sp/tokenizer.model"));

  r = sh("generate --run-dir run --prompt 'The ' --max-new 60 --temperature 0.8 --seed 3");
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  MESSAGE("generated: " << r.out);
  CHECK(r.out.rfind("The ", 0) == 0);
  CHECK(r.out.size() > 4 + 60);  // 60 pieces are more than 60 bytes at this vocab
  CHECK(r.out.find('?') == std::string::npos);
  REQUIRE(sh("eval --run-dir run --data data_sp --k 1").rc == 0);

  // One error line wherever the tokenizers differ: eval on byte data, init from these weights on
  // byte data, a resume on byte data, and a run whose tokenizer.model was replaced.
  r = sh("eval --run-dir run --data data_b --k 1");
  check_one_error_line(r.err, {"tokenizer mismatch", "bytes", sp.hash()});
  r = sh("eval --weights run/model.h5 --data data_b --k 1");  // model.h5's tokenizer_hash attribute
  check_one_error_line(r.err, {"tokenizer mismatch", "bytes", sp.hash()});
  r = sh("train --data data_b --run-dir run2 --vocab 800 --init-weights run/model.h5" + model);
  check_one_error_line(r.err, {"tokenizer mismatch", "--init-weights"});
  r = sh("train --config run/config.ini --data data_b --run-dir run3 --vocab 800");
  check_one_error_line(r.err, {"tokenizer mismatch", sp.hash()});

  // convert: the Mixtral directory carries tokenizer.model; GGUF carries its pieces.
  REQUIRE(sh("convert --checkpoint run --to hf --out hf").rc == 0);
  CHECK(slurp(d / "hf/tokenizer.model") == slurp(d / "run/tokenizer.model"));
  r = sh("convert --checkpoint run --to gguf --out m.gguf");
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(r.out.find("SentencePiece") != std::string::npos);
  r = sh("generate --weights hf --prompt 'The ' --max-new 10");
  CHECK_MESSAGE(r.rc == 0, r.err);
  r = sh("eval --weights hf --data data_b --k 1");
  check_one_error_line(r.err, {"tokenizer mismatch"});

  data::train_sp(text, 700, (d / "other.model").string());
  fs::copy_file(d / "other.model", d / "run/tokenizer.model", fs::copy_options::overwrite_existing);
  fs::copy_file(d / "other.model", d / "data_sp/tokenizer.model", fs::copy_options::overwrite_existing);
  r = sh("generate --run-dir run --prompt 'The ' --max-new 5");
  check_one_error_line(r.err, {"tokenizer mismatch", sp.hash()});
}
