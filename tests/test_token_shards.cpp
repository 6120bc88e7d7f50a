// Sharded, memory-mapped token data: directory layouts, windows that never cross a shard
// boundary, the draw as a pure function of (seed, index, shard sizes), the single-file draw
// unchanged, mapping instead of copying (resident memory), a changed shard refused on resume, bad
// shard files as one-line errors, and `prepare --shard-tokens` (reshard_split).
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/token_shards.h"
#include "runtime/rng.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::data;
namespace fs = std::filesystem;

namespace {

struct TempDir : anyk::test::TempDir {
  TempDir() : anyk::test::TempDir("test_token_shards") {}
};

template <class F>
std::string error_text(F&& f) {
  try {
    f();
  } catch (const anyk::Error& e) {
    return e.what();
  }
  return "";
}

// Shard s holds tokens s * 256 + position: a window's tokens say which shard and where.
std::vector<uint16_t> tagged(int s, int64_t n) {
  std::vector<uint16_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = uint16_t(s * 256 + i);
  return t;
}

// This process's resident set (VmRSS) in bytes.
int64_t rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string key;
  int64_t kb = -1;
  while (in >> key) {
    if (key == "VmRSS:") {
      in >> kb;
      break;
    }
    std::string rest;
    std::getline(in, rest);
  }
  REQUIRE(kb > 0);
  return kb * 1024;
}

bool mapped_in_this_process(const std::string& path) {
  std::ifstream in("/proc/self/maps");
  const std::string real = fs::canonical(path).string();
  for (std::string line; std::getline(in, line);)
    if (line.size() >= real.size() && line.compare(line.size() - real.size(), real.size(), real) == 0) return true;
  return false;
}

}  // namespace

TEST_CASE("shards: directory layouts") {
  TempDir dir;
  const std::vector<uint16_t> t = tagged(0, 100);
  SUBCASE("one file per split") {
    write_shard(dir.file("train.bin"), t.data(), t.size());
    CHECK(TokenShards::split_paths(dir.path.string(), "train") == std::vector<std::string>{dir.file("train.bin")});
    const std::string e = error_text([&] { TokenShards::split_paths(dir.path.string(), "val"); });
    CHECK(e.find("no val data in " + dir.path.string()) != std::string::npos);
    CHECK(e.find('\n') == std::string::npos);
  }
  SUBCASE("shards in name order; llm.c names; the other split not mixed in") {
    for (const char* n : {"train_000002.bin", "train_000000.bin", "train_000001.bin", "val_000000.bin",
                          "notes.txt", "train_000003.bin.tmp"})
      write_shard(dir.file(n), t.data(), t.size());
    CHECK(TokenShards::split_paths(dir.path.string(), "train") ==
          std::vector<std::string>{dir.file("train_000000.bin"), dir.file("train_000001.bin"),
                                   dir.file("train_000002.bin")});
    CHECK(TokenShards::split_paths(dir.path.string(), "val") == std::vector<std::string>{dir.file("val_000000.bin")});
    TempDir fw;
    for (const char* n : {"fineweb_train_000002.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"})
      write_shard(fw.file(n), t.data(), t.size());
    CHECK(TokenShards::split_paths(fw.path.string(), "train") ==
          std::vector<std::string>{fw.file("fineweb_train_000001.bin"), fw.file("fineweb_train_000002.bin")});
  }
  SUBCASE("both layouts at once is one clear error") {
    write_shard(dir.file("train.bin"), t.data(), t.size());
    write_shard(dir.file("train_000000.bin"), t.data(), t.size());
    const std::string e = error_text([&] { TokenShards::open(dir.path.string(), "train"); });
    CHECK(e.find("holds both train.bin and 1 train_*.bin shard(s)") != std::string::npos);
    CHECK(e.find("hint: keep one layout") != std::string::npos);
    CHECK(e.find('\n') == std::string::npos);
  }
}

TEST_CASE("shards: windows never cross a shard boundary and every valid start is drawn uniformly") {
  TempDir dir;
  const int T = 8;
  // Sizes: a normal shard, one shorter than T + 1 (no valid start), an empty one, exactly T + 1
  // (one start), a larger one.
  const std::vector<int64_t> sizes = {40, 6, 0, 9, 57};
  std::vector<std::string> paths;
  int64_t valid = 0;
  for (size_t s = 0; s < sizes.size(); ++s) {
    const std::vector<uint16_t> t = tagged(int(s), sizes[s]);
    paths.push_back(dir.file("train_00000" + std::to_string(s) + ".bin"));
    write_shard(paths.back(), t.data(), t.size());
    valid += std::max<int64_t>(sizes[s] - T, 0);
  }
  CHECK(valid == 32 + 1 + 49);
  auto shards = TokenShards::open(dir.path.string(), "train");
  REQUIRE(shards->num_shards() == 5);
  CHECK(shards->num_tokens() == 40 + 6 + 9 + 57);
  Loader ld(shards, T, 11);
  std::map<std::pair<int, int64_t>, int> hits;
  std::vector<int> x(T), y(T);
  const int draws = 30000;
  for (int64_t g = 0; g < draws; ++g) {
    ld.sample(g, x.data(), y.data());
    const int s = x[0] / 256;
    const int64_t start = x[0] % 256;
    REQUIRE(ld.window_of(g) == std::make_pair(s, start));
    for (int t = 0; t < T; ++t) {  // one shard, consecutive positions, last target inside it
      REQUIRE(x[size_t(t)] == s * 256 + start + t);
      REQUIRE(y[size_t(t)] == s * 256 + start + t + 1);
    }
    REQUIRE(start + T <= sizes[size_t(s)] - 1);
    hits[{s, start}] += 1;
  }
  CHECK(int64_t(hits.size()) == valid);  // every valid start of every shard, nothing else
  CHECK(hits.count({3, 0}) == 1);        // the shard of exactly T + 1 tokens
  CHECK(hits.count({1, 0}) == 0);
  // Uniform over all valid windows (not per shard): mean 366 draws each, sd about 19.
  const double mean = double(draws) / double(valid);
  for (const auto& kc : hits) {  // by name: clang 14 refuses a structured binding in INFO
    const auto& k = kc.first;
    const auto c = kc.second;
    INFO("shard " << k.first << " start " << k.second);
    CHECK(std::abs(c - mean) < 0.3 * mean);
  }

  // Eval windows tile each shard from its token 0, in shard order, none across a boundary.
  CHECK(ld.num_eval_windows() == (40 - 1) / T + 0 + 0 + (9 - 1) / T + (57 - 1) / T);
  std::vector<std::pair<int, int>> firsts;
  for (int64_t i = 0; i < ld.num_eval_windows(); ++i) {
    ld.eval_window(i, x.data(), y.data());
    firsts.emplace_back(x[0] / 256, x[0] % 256);
    CHECK(y[T - 1] == x[0] + T);
  }
  CHECK(firsts == std::vector<std::pair<int, int>>{{0, 0}, {0, 8}, {0, 16}, {0, 24}, {3, 0}, {4, 0}, {4, 8},
                                                   {4, 16}, {4, 24}, {4, 32}, {4, 40}, {4, 48}});

  // No shard holding a window: one clear line.
  const std::string e = error_text([&] { Loader(shards, 60, 1); });
  CHECK(e.find("none of 5 shards (longest 57 tokens) holds one window of T=60") != std::string::npos);
}

TEST_CASE("shards: one file draws exactly the windows of the single-array loader") {
  TempDir dir;
  std::vector<uint16_t> t(5000);
  for (size_t i = 0; i < t.size(); ++i) t[i] = uint16_t((i * 2654435761u) >> 17);
  write_shard(dir.file("train.bin"), t.data(), t.size());
  const int T = 64;
  Loader mapped(TokenShards::open(dir.path.string(), "train"), T, 5);
  Loader memory(std::make_shared<const std::vector<uint16_t>>(t), T, 5);
  CHECK(mapped.shards().mapped(0));
  CHECK_FALSE(memory.shards().mapped(0));
  std::vector<int> x(T), y(T), x2(T), y2(T);
  for (int64_t g = 0; g < 2000; ++g) {
    // The draw of the loader before shards: start = uniform_int(hash(seed, stream, g), n - T).
    const int64_t start = int64_t(uniform_int(hash_key(5, 0x10ADE5, uint64_t(g)), uint64_t(5000 - T)));
    REQUIRE(mapped.window_of(g) == std::make_pair(0, start));
    mapped.sample(g, x.data(), y.data());
    memory.sample(g, x2.data(), y2.data());
    REQUIRE(x == x2);
    REQUIRE(y == y2);
    REQUIRE(x[0] == t[size_t(start)]);
    REQUIRE(y[T - 1] == t[size_t(start + T)]);
  }
}

TEST_CASE("shards: the draw is a pure function of (seed, index, shard sizes)") {
  TempDir dir, copy;
  const int T = 16, B = 3, world = 2;
  const std::vector<int64_t> sizes = {300, 200, 250};
  std::vector<std::shared_ptr<const std::vector<uint16_t>>> arrays;
  for (size_t s = 0; s < sizes.size(); ++s) {
    const std::vector<uint16_t> t = tagged(int(s), sizes[s]);
    write_shard(dir.file("train_00000" + std::to_string(s) + ".bin"), t.data(), t.size());
    write_shard(copy.file("corpus_train_" + std::string(1, char('a' + s)) + ".bin"), t.data(), t.size());
    arrays.push_back(std::make_shared<const std::vector<uint16_t>>(t));
  }
  Loader run(TokenShards::open(dir.path.string(), "train"), T, 3);
  std::vector<std::vector<int>> seen;  // rank 0 then rank 1 of each step
  for (int step = 0; step < 10; ++step) {
    for (int r = 0; r < world; ++r) {
      Loader rank(TokenShards::open(dir.path.string(), "train"), T, 3);
      rank.set_position(run.position());
      std::vector<int> x(B * T), y(B * T);
      rank.next(B, r, world, x.data(), y.data());
      seen.push_back(x);
    }
    std::vector<int> x(B * world * T), y(B * world * T);
    run.next(B * world, 0, 1, x.data(), y.data());
    std::vector<int> both = seen[seen.size() - 2];
    both.insert(both.end(), seen.back().begin(), seen.back().end());
    CHECK(both == x);  // any rank, resumed at any position, reads its part of the same batch
  }
  // Another storage of the same shard sizes (renamed copies; arrays in memory): the same windows.
  Loader renamed(TokenShards::open(copy.path.string(), "train"), T, 3);
  Loader memory(TokenShards::in_memory(arrays), T, 3);
  for (int64_t g = 0; g < 500; ++g) {
    REQUIRE(renamed.window_of(g) == run.window_of(g));
    REQUIRE(memory.window_of(g) == run.window_of(g));
  }
  // Another seed, another stream.
  Loader other(TokenShards::in_memory(arrays), T, 4);
  int same = 0;
  for (int64_t g = 0; g < 100; ++g) same += other.window_of(g) == run.window_of(g);
  CHECK(same < 10);
}

TEST_CASE("shards: a large corpus is mapped, not copied into this process") {
  TempDir dir;
  // A sparse 128 MiB shard (64 Mi zero tokens): no disk blocks, but a copy would be 128 MiB.
  const int64_t n = int64_t(64) << 20;
  const std::string path = dir.file("train_000000.bin");
  {
    std::vector<int32_t> header(kShardHeaderInts, 0);
    header[0] = kShardMagic;
    header[1] = kShardVersion;
    header[2] = int32_t(n);
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(header.data()), kShardHeaderBytes);
    fs::resize_file(path, kShardHeaderBytes + uint64_t(n) * 2);
  }
  const int64_t before = rss_bytes();
  {
    // The vocab check streams over the whole mapping once and must release what it touched.
    auto shards = TokenShards::open(dir.path.string(), "train", 256);
    CHECK(shards->num_tokens() == n);
    CHECK(shards->mapped(0));
    CHECK(shards->resident_bytes() == 0);
    CHECK(mapped_in_this_process(path));
    Loader ld(shards, 1024, 9);
    std::vector<int> x(1024), y(1024);
    // 4000 windows spread over the file: without the loader's release the kernel's fault-around
    // and large folios would map most of it (each fault maps up to 2 MiB).
    for (int64_t g = 0; g < 4000; ++g) ld.sample(g, x.data(), y.data());
    for (int64_t i = 0; i < ld.num_eval_windows(); i += 97) ld.eval_window(i, x.data(), y.data());
    const int64_t sampled = rss_bytes() - before;
    const std::vector<double> h = shards->histogram(256);
    CHECK(h[0] == double(n));
    const int64_t grown = rss_bytes() - before;
    MESSAGE("resident growth with a 128 MiB shard mapped and checked, then sampled: " << sampled / 1024
            << " KiB; after the histogram pass: " << grown / 1024 << " KiB");
    CHECK(sampled < (int64_t(16) << 20));
    CHECK(grown < (int64_t(16) << 20));
  }
  CHECK_FALSE(mapped_in_this_process(path));  // unmapped with the last reference
  // The measure itself can see a copy: reading the shard whole grows the resident set by ~128 MiB.
  const int64_t before_read = rss_bytes();
  std::vector<uint16_t> all = read_shard(path, 0);
  CHECK(rss_bytes() - before_read > (int64_t(100) << 20));
  CHECK(all.size() == size_t(n));
}

TEST_CASE("shards: a resume over changed shard sizes is refused in one line") {
  auto arr = [](int64_t n) { return std::make_shared<const std::vector<uint16_t>>(size_t(n), uint16_t(1)); };
  auto now = TokenShards::in_memory({arr(100), arr(50)});
  CHECK(now->describe() == "memory_0 100\nmemory_1 50\n");
  CHECK_NOTHROW(check_same_shards(*now, "memory_0 100\nmemory_1 50\n", "ckpt/meta.h5"));
  CHECK_NOTHROW(check_same_shards(*now, "train 000000.bin 100\nold_name.bin 50\n", "ckpt/meta.h5"));  // renamed
  CHECK_NOTHROW(check_same_shards(*now, "", "ckpt/meta.h5"));  // an older checkpoint: nothing recorded

  std::string e = error_text([&] { check_same_shards(*now, "a.bin 100\nb.bin 51\n", "ckpt/meta.h5"); });
  CHECK(e.find("training shard 1 memory_1 holds 50 tokens but ckpt/meta.h5 was written when b.bin held 51") !=
        std::string::npos);
  CHECK(e.find("hint: resume over the data the run started with") != std::string::npos);
  CHECK(e.find('\n') == std::string::npos);
  e = error_text([&] { check_same_shards(*now, "a.bin 100\n", "ckpt/meta.h5"); });
  CHECK(e.find("the training data has 2 shard(s) (first memory_0, 100 tokens) but ckpt/meta.h5 was written over 1") !=
        std::string::npos);
  e = error_text([&] { check_same_shards(*now, "a.bin 1x0\n", "ckpt/meta.h5"); });
  CHECK(e.find("ckpt/meta.h5: bad shard record 'a.bin 1x0'") != std::string::npos);
}

TEST_CASE("shards: bad shard files give one-line errors naming the file") {
  TempDir dir;
  const std::vector<uint16_t> t = {1, 2, 3, 4, 5, 600, 7};
  write_shard(dir.file("train_000000.bin"), t.data(), t.size());
  const std::string bad = dir.file("train_000001.bin");
  auto open_err = [&](int vocab) { return error_text([&] { TokenShards::open(dir.path.string(), "train", vocab); }); };
  SUBCASE("odd header") {
    std::vector<int32_t> header(256, 0);
    header[0] = 777;
    header[1] = 1;
    std::ofstream(bad, std::ios::binary).write(reinterpret_cast<const char*>(header.data()), 1024);
    const std::string e = open_err(0);
    CHECK(e.find(bad + ": bad magic 777, expected 20240520") != std::string::npos);
    CHECK(e.find('\n') == std::string::npos);
  }
  SUBCASE("truncated") {
    write_shard(bad, t.data(), t.size());
    fs::resize_file(bad, 1024 + 2 * 3);
    const std::string e = open_err(0);
    CHECK(e.find(bad + ": file is truncated: header says 7 tokens, file holds 3") != std::string::npos);
    CHECK(e.find('\n') == std::string::npos);
  }
  SUBCASE("shorter than the header") {
    std::ofstream(bad, std::ios::binary) << "hello";
    CHECK(open_err(0).find(bad + " holds 5 bytes, less than the 1024-byte header") != std::string::npos);
  }
  SUBCASE("token >= vocab, found in the mapping") {
    const std::string e = open_err(256);
    CHECK(e.find(dir.file("train_000000.bin") + ": token 600 at index 5 is >= vocab 256") != std::string::npos);
    CHECK(e.find('\n') == std::string::npos);
    CHECK(open_err(601).empty());
  }
}

TEST_CASE("shards: prepare --shard-tokens (reshard_split)") {
  TempDir dir;
  std::vector<uint16_t> t(2500);
  for (size_t i = 0; i < t.size(); ++i) t[i] = uint16_t(i * 7);
  write_shard(dir.file("train.bin"), t.data(), t.size());
  write_shard(dir.file("train_000009.bin"), t.data(), 10);         // stale, from an earlier prepare
  write_shard(dir.file("fineweb_train_000001.bin"), t.data(), 10);  // not ours: kept
  CHECK(reshard_split(dir.path.string(), "train", 1000) == 3);
  CHECK_FALSE(fs::exists(dir.file("train.bin")));
  CHECK_FALSE(fs::exists(dir.file("train_000009.bin")));
  CHECK(fs::exists(dir.file("fineweb_train_000001.bin")));
  std::vector<uint16_t> back;
  for (const char* n : {"train_000000.bin", "train_000001.bin", "train_000002.bin"}) {
    const std::vector<uint16_t> s = read_shard(dir.file(n));
    CHECK(s.size() == (std::string(n) == "train_000002.bin" ? 500u : 1000u));
    back.insert(back.end(), s.begin(), s.end());
  }
  CHECK(back == t);
  // Back to one file: the shards of the earlier run are removed.
  write_shard(dir.file("train.bin"), t.data(), t.size());
  CHECK(reshard_split(dir.path.string(), "train", 0) == 1);
  CHECK_FALSE(fs::exists(dir.file("train_000000.bin")));
  CHECK(fs::exists(dir.file("train.bin")));
  CHECK(error_text([&] { reshard_split(dir.path.string(), "train", -5); }).find("--shard-tokens -5 must be >= 0") !=
        std::string::npos);
}
