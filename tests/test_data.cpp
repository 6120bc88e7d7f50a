// Data module: byte tokenizer, llm.c shard IO and its error messages, `prepare` on a small
// directory tree, and the loader checked against a naive loop and across rank layouts.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "core/check.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::data;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the system temp dir, removed on scope exit.
struct TempDir : anyk::test::TempDir {
  TempDir() : anyk::test::TempDir("test_data") {}
};

void write_file(const fs::path& p, const std::string& content) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out << content;
}

// True when f throws anyk::Error whose message contains needle; prints the message otherwise.
template <class F>
bool throws_with(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const anyk::Error& e) {
    const std::string msg = e.what();
    if (msg.find(needle) != std::string::npos) return true;
    MESSAGE("message was: " << msg << " (wanted: " << needle << ")");
    return false;
  }
  MESSAGE("did not throw (wanted: " << needle << ")");
  return false;
}

std::string text_of(size_t n, uint64_t salt) {
  std::string s(n, ' ');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + salt * 13 + i / 5) % 26);
  return s;
}

}  // namespace

TEST_CASE("tokenizer: byte round trip") {
  std::string s = "hello, world\n";
  s.push_back('\0');
  s.push_back(static_cast<char>(0xff));
  s += "\xc3\xa9";  // é in UTF-8
  std::vector<uint16_t> toks = encode_bytes(s);
  REQUIRE(toks.size() == s.size());
  CHECK(toks[0] == 'h');
  CHECK(toks[14] == 0xff);
  CHECK(decode_bytes(toks.data(), toks.size()) == s);
  const uint16_t big[] = {'a', 300, 'b'};
  CHECK(decode_bytes(big, 3) == "a?b");
}

TEST_CASE("shard: write/read round trip") {
  TempDir dir;
  std::vector<uint16_t> toks(5000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<uint16_t>((i * 31) % 50257);
  const std::string path = dir.file("x.bin");
  write_shard(path, toks.data(), toks.size());
  CHECK(!fs::exists(path + ".tmp"));
  CHECK(fs::file_size(path) == 1024 + 2 * toks.size());
  CHECK(read_shard(path, 0) == toks);
  CHECK(read_shard(path, 50257) == toks);
  int naive_max = -1;
  for (uint16_t t : toks) naive_max = std::max<int>(naive_max, t);
  CHECK(max_token(toks) == naive_max);
  CHECK(max_token({}) == -1);
  CHECK(max_token({3, 9, 2}) == 9);

  // An empty shard is a valid shard.
  write_shard(dir.file("empty.bin"), nullptr, 0);
  CHECK(read_shard(dir.file("empty.bin")).empty());
}

TEST_CASE("shard: read_shard rejects bad files with actionable messages") {
  TempDir dir;
  std::vector<uint16_t> toks = {1, 2, 3, 4, 5, 600, 7};
  const std::string good = dir.file("good.bin");
  write_shard(good, toks.data(), toks.size());

  SUBCASE("missing file") {
    const std::string missing = dir.file("nope.bin");
    CHECK(throws_with([&] { read_shard(missing, 0); }, missing));
    CHECK(throws_with([&] { read_shard(missing, 0); }, "does not exist"));
  }
  SUBCASE("bad magic") {
    const std::string bad = dir.file("bad.bin");
    std::vector<int32_t> header(256, 0);
    header[0] = 12345;
    header[1] = 1;
    std::ofstream(bad, std::ios::binary).write(reinterpret_cast<const char*>(header.data()), 1024);
    CHECK(throws_with([&] { read_shard(bad, 0); },
                      "bad magic 12345, expected 20240520 (not an llm.c token shard?)"));
    CHECK(throws_with([&] { read_shard(bad, 0); }, bad));
  }
  SUBCASE("shorter than the header") {
    const std::string tiny = dir.file("tiny.bin");
    write_file(tiny, "hello");
    CHECK(throws_with([&] { read_shard(tiny, 0); }, tiny));
    CHECK(throws_with([&] { read_shard(tiny, 0); }, "header"));
  }
  SUBCASE("truncated body") {
    fs::resize_file(good, 1024 + 2 * 4);
    CHECK(throws_with([&] { read_shard(good, 0); },
                      "file is truncated: header says 7 tokens, file holds 4"));
  }
  SUBCASE("bad version") {
    std::fstream f(good, std::ios::binary | std::ios::in | std::ios::out);
    const int32_t v = 2;
    f.seekp(4);
    f.write(reinterpret_cast<const char*>(&v), 4);
    f.close();
    CHECK(throws_with([&] { read_shard(good, 0); }, "version 2"));
  }
  SUBCASE("token >= vocab") {
    CHECK(throws_with([&] { read_shard(good, 256); }, "token 600 at index 5"));
    CHECK(throws_with([&] { read_shard(good, 256); }, "vocab 256"));
    CHECK(throws_with([&] { read_shard(good, 256); }, "hint: pass --vocab 601 or re-prepare the data"));
    CHECK(read_shard(good, 601) == toks);
  }
}

TEST_CASE("prepare: directory tree to train/val shards") {
  TempDir dir;
  const fs::path in = dir.path / "in";
  // Names chosen so the sorted order differs from creation order.
  const std::string a = text_of(3000, 1), b = text_of(1500, 2), c = text_of(2200, 3),
                    d = text_of(900, 4);
  write_file(in / "zeta.txt", a);
  write_file(in / "alpha", b);
  write_file(in / "alpha.dat", std::string("\x00\x01\x02binary index", 15));  // skipped
  write_file(in / "nested" / "mid.u8", c);
  write_file(in / "nested" / "deeper" / "x.txt", d);
  write_file(in / ".hidden", "must not appear");
  write_file(in / ".git" / "config", "must not appear");
  std::error_code ec;
  fs::create_directory_symlink(in, in / "nested" / "loop", ec);  // skipped, never followed
  // Sorted by full path: alpha, nested/deeper/x.txt, nested/mid.u8, zeta.txt.
  const std::string expected = b + d + c + a;

  const double frac = 0.3;
  std::vector<std::string> lines;
  const std::string out = (dir.path / "out" / "sub").string();
  PrepareStats st = prepare({in.string()}, out, frac, [&](const std::string& s) { lines.push_back(s); });
  CHECK(st.files == 4);
  CHECK(st.bytes == static_cast<int64_t>(expected.size()));
  CHECK(!lines.empty());

  std::vector<uint16_t> train = read_shard((fs::path(out) / "train.bin").string(), 256);
  std::vector<uint16_t> val = read_shard((fs::path(out) / "val.bin").string(), 256);
  CHECK(static_cast<int64_t>(train.size()) == st.train_tokens);
  CHECK(static_cast<int64_t>(val.size()) == st.val_tokens);
  std::vector<uint16_t> all = train;
  all.insert(all.end(), val.begin(), val.end());
  CHECK(decode_bytes(all.data(), all.size()) == expected);
  const double want_val = frac * static_cast<double>(expected.size());
  CHECK(std::abs(static_cast<double>(val.size()) - want_val) <= 1.0);
}

TEST_CASE("prepare: errors") {
  TempDir dir;
  write_file(dir.path / "small.txt", "too little text");
  write_file(dir.path / "big.txt", text_of(5000, 9));
  const std::string missing = dir.file("missing_input");
  CHECK(throws_with([&] { prepare({missing}, dir.file("o"), 0.1); }, missing));
  CHECK(throws_with([&] { prepare({dir.file("small.txt")}, dir.file("o"), 0.1); }, "at least 1024"));
  CHECK(throws_with([&] { prepare({dir.file("big.txt")}, dir.file("o"), 0.0); }, "val_fraction 0"));
  CHECK(throws_with([&] { prepare({dir.file("big.txt")}, dir.file("o"), 1.0); }, "val_fraction 1"));
  fs::create_directories(dir.path / "empty_dir");
  write_file(dir.path / "empty_dir" / "only.dat", "index");
  CHECK(throws_with([&] { prepare({(dir.path / "empty_dir").string()}, dir.file("o"), 0.1); },
                    "no input text"));
}

TEST_CASE("loader: windows against a naive loop") {
  auto toks = std::make_shared<std::vector<uint16_t>>(777);
  for (size_t i = 0; i < toks->size(); ++i) (*toks)[i] = static_cast<uint16_t>(i);  // value == index
  const int T = 16;
  Loader ld(toks, T, 42);
  CHECK(ld.num_tokens() == 777);
  CHECK(ld.seq_len() == T);

  std::vector<int> x(T), y(T), x2(T), y2(T);
  bool saw_last_start = false, saw_different = false;
  int first_start = -1;
  for (int64_t g = 0; g < 5000; ++g) {
    ld.sample(g, x.data(), y.data());
    ld.sample(g, x2.data(), y2.data());
    REQUIRE(x == x2);
    REQUIRE(y == y2);
    const int start = x[0];
    REQUIRE(start >= 0);
    REQUIRE(start + T < 777);  // last target index inside the data
    for (int t = 0; t < T; ++t) {
      REQUIRE(x[t] == (*toks)[start + t]);
      REQUIRE(y[t] == (*toks)[start + t + 1]);
    }
    if (start == 777 - T - 1) saw_last_start = true;
    if (g == 0) first_start = start;
    else if (start != first_start) saw_different = true;
  }
  CHECK(saw_last_start);  // the full range [0, n - T) is reachable
  CHECK(saw_different);

  // A different seed gives a different stream.
  Loader other(toks, T, 43);
  int same = 0;
  for (int64_t g = 0; g < 50; ++g) {
    ld.sample(g, x.data(), y.data());
    other.sample(g, x2.data(), y2.data());
    same += x == x2;
  }
  CHECK(same < 5);

  CHECK(throws_with([&] { Loader(toks, 777, 1); }, "hint: use a smaller --seq-len or more data"));
  CHECK(throws_with([&] { Loader(toks, 777, 1); }, "777 tokens"));
  Loader exact(toks, 776, 1);  // n == T + 1: exactly one window
  std::vector<int> xe(776), ye(776);
  exact.sample(123, xe.data(), ye.data());
  CHECK(xe[0] == 0);
  CHECK(ye[775] == 776);
}

TEST_CASE("loader: rank layouts and resume") {
  auto toks = std::make_shared<std::vector<uint16_t>>(4096);
  for (size_t i = 0; i < toks->size(); ++i) (*toks)[i] = static_cast<uint16_t>((i * 2654435761u) >> 20);
  const int T = 8, B = 3;
  Loader one(toks, T, 7), r0(toks, T, 7), r1(toks, T, 7);
  for (int step = 0; step < 4; ++step) {
    std::vector<int> x1(2 * B * T), y1(2 * B * T), xa(B * T), ya(B * T), xb(B * T), yb(B * T);
    one.next(2 * B, 0, 1, x1.data(), y1.data());
    r0.next(B, 0, 2, xa.data(), ya.data());
    r1.next(B, 1, 2, xb.data(), yb.data());
    xa.insert(xa.end(), xb.begin(), xb.end());
    ya.insert(ya.end(), yb.begin(), yb.end());
    CHECK(xa == x1);
    CHECK(ya == y1);
    CHECK(one.position() == (step + 1) * 2 * B);
    CHECK(r0.position() == one.position());
    CHECK(r1.position() == one.position());
  }

  // batch() rows are consecutive samples.
  std::vector<int> xb(B * T), yb(B * T), xs(T), ys(T);
  one.batch(100, B, xb.data(), yb.data());
  for (int b = 0; b < B; ++b) {
    one.sample(100 + b, xs.data(), ys.data());
    CHECK(std::vector<int>(xb.begin() + b * T, xb.begin() + (b + 1) * T) == xs);
    CHECK(std::vector<int>(yb.begin() + b * T, yb.begin() + (b + 1) * T) == ys);
  }

  // Resume: a fresh loader set to a saved position reproduces the next batch.
  const int64_t saved = one.position();
  std::vector<int> xn(B * T), yn(B * T), xr(B * T), yr(B * T);
  one.next(B, 0, 1, xn.data(), yn.data());
  Loader resumed(toks, T, 7);
  resumed.set_position(saved);
  CHECK(resumed.position() == saved);
  resumed.next(B, 0, 1, xr.data(), yr.data());
  CHECK(xr == xn);
  CHECK(yr == yn);
  CHECK(throws_with([&] { resumed.next(B, 2, 2, xr.data(), yr.data()); }, "rank 2"));
}

TEST_CASE("loader: eval windows tile the split once") {
  auto toks = std::make_shared<std::vector<uint16_t>>(1000);
  for (size_t i = 0; i < toks->size(); ++i) (*toks)[i] = static_cast<uint16_t>(i);
  const int T = 64;
  Loader ld(toks, T, 1);
  const int64_t nw = ld.num_eval_windows();
  CHECK(nw == (1000 - 1) / T);
  CHECK(ld.num_eval_windows(T) == nw);
  CHECK(ld.num_eval_windows(100) == 9);
  std::vector<int> covered(1000, 0);
  std::vector<int> x(T), y(T);
  for (int64_t i = 0; i < nw; ++i) {
    ld.eval_window(i, x.data(), y.data());
    CHECK(x[0] == i * T);
    for (int t = 0; t < T; ++t) {
      CHECK(y[t] == x[t] + 1);
      covered[x[t]]++;
    }
  }
  for (int i = 0; i < 1000; ++i) CHECK(covered[i] == (i < nw * T ? 1 : 0));
  CHECK(nw * T + 1 <= 1000);  // the last target of the last window is in the data
  CHECK(throws_with([&] { ld.eval_window(nw, x.data(), y.data()); }, "outside"));
}
