// Shard sets: directory layout, mmap of each shard file, and the streaming passes (vocab check,
// histogram) that read a mapped shard once without keeping it resident.
#include "data/token_shards.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fcntl.h>
#include <sstream>
#include <sys/mman.h>
#include <unistd.h>

#include "core/check.h"
#include "data/shard.h"

namespace anyk::data {

namespace fs = std::filesystem;

namespace {
constexpr int64_t kStreamChunk = int64_t(1) << 21;  // tokens per chunk of a streaming pass (4 MiB)

bool is_split_shard(const std::string& name, const std::string& split) {
  if (name.size() < 4 || name.compare(name.size() - 4, 4, ".bin") != 0) return false;
  const std::string key = split + "_";
  return name.rfind(key, 0) == 0 || name.find("_" + key) != std::string::npos;
}
}  // namespace

std::vector<std::string> TokenShards::split_paths(const std::string& dir, const std::string& split) {
  std::error_code ec;
  ANYK_CHECK(fs::is_directory(dir, ec), "data directory " << dir << " not found hint: run `anyk prepare --out "
                                                          << dir << "` first or fix --data");
  const fs::path single = fs::path(dir) / (split + ".bin");
  std::vector<std::string> shards;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (is_split_shard(name, split)) shards.push_back(e.path().string());
  }
  ANYK_CHECK(!ec, "cannot list data directory " << dir << ": " << ec.message());
  std::sort(shards.begin(), shards.end());
  const bool has_single = fs::exists(single, ec);
  ANYK_CHECK(!(has_single && !shards.empty()),
             "data directory " << dir << " holds both " << single.filename().string() << " and " << shards.size()
                               << " " << split << "_*.bin shard(s) (first " << fs::path(shards[0]).filename().string()
                               << ") hint: keep one layout: remove " << single.string() << " or the shards");
  if (has_single) return {single.string()};
  ANYK_CHECK(!shards.empty(), "no " << split << " data in " << dir << ": expected " << single.filename().string()
                                    << " or " << split << "_*.bin shards hint: run `anyk prepare --out " << dir
                                    << "` first or fix --data");
  return shards;
}

std::shared_ptr<const TokenShards> TokenShards::open(const std::string& dir, const std::string& split, int vocab) {
  return map_files(split_paths(dir, split), vocab);
}

void TokenShards::add(TokenShard s, Map m) {
  total_ += s.n;
  shards_.push_back(std::move(s));
  maps_.push_back(m);
}

std::shared_ptr<const TokenShards> TokenShards::map_files(const std::vector<std::string>& paths, int vocab) {
  std::shared_ptr<TokenShards> ts(new TokenShards());
  ts->from_files_ = true;
  for (const std::string& path : paths) {
    const int64_t n = check_shard(path);
    TokenShard s{fs::path(path).filename().string(), nullptr, n};
    Map m;
    if (n > 0) {
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      ANYK_CHECK(fd >= 0, "cannot open shard " << path << ": " << std::strerror(errno)
                                               << " hint: check file permissions");
      m.len = size_t(kShardHeaderBytes) + size_t(n) * sizeof(uint16_t);
      m.addr = ::mmap(nullptr, m.len, PROT_READ, MAP_PRIVATE, fd, 0);
      const int err = errno;
      ::close(fd);  // the mapping keeps the file open
      ANYK_CHECK(m.addr != MAP_FAILED, "cannot mmap shard " << path << " (" << m.len << " bytes): "
                                                           << std::strerror(err) << " hint: check ulimit -v");
      s.data = reinterpret_cast<const uint16_t*>(static_cast<const char*>(m.addr) + kShardHeaderBytes);
    }
    ts->add(std::move(s), m);
    const int i = ts->num_shards() - 1;
    if (vocab > 0) {
      int64_t at = 0;
      ts->stream(i, [&](const uint16_t* p, int64_t c) {
        for (int64_t j = 0; j < c; ++j)
          ANYK_CHECK(p[j] < vocab, "shard " << path << ": token " << p[j] << " at index " << at + j
                                            << " is >= vocab " << vocab << " hint: pass a larger --vocab "
                                            << "or re-prepare the data");
        at += c;
      });
    }
  }
  return ts;
}

std::shared_ptr<const TokenShards> TokenShards::in_memory(
    std::vector<std::shared_ptr<const std::vector<uint16_t>>> arrays) {
  std::shared_ptr<TokenShards> ts(new TokenShards());
  for (size_t i = 0; i < arrays.size(); ++i) {
    ANYK_CHECK(arrays[i], "TokenShards::in_memory: array " << i << " is null");
    ts->add(TokenShard{"memory_" + std::to_string(i), arrays[i]->data(), int64_t(arrays[i]->size())}, Map{});
    ts->resident_ += int64_t(arrays[i]->size() * sizeof(uint16_t));
    ts->keep_.push_back(std::move(arrays[i]));
  }
  return ts;
}

TokenShards::~TokenShards() {
  for (const Map& m : maps_)
    if (m.addr) ::munmap(m.addr, m.len);
}

void TokenShards::release(int i, int64_t at, int64_t n) const {
  const Map& m = maps_[size_t(i)];
  if (!m.addr || n <= 0) return;
  constexpr uintptr_t kBlock = uintptr_t(1) << 21;
  const uintptr_t base = reinterpret_cast<uintptr_t>(m.addr), end = base + m.len;
  const uintptr_t first = reinterpret_cast<uintptr_t>(shards_[size_t(i)].data + at);
  const uintptr_t lo = std::max(base, first & ~(kBlock - 1));  // base is page-aligned (mmap)
  const uintptr_t hi = std::min(end, (first + uintptr_t(n) * 2 + kBlock - 1) & ~(kBlock - 1));
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

template <class F>
void TokenShards::stream(int i, F&& f) const {
  const TokenShard& s = shards_[size_t(i)];
  for (int64_t at = 0; at < s.n; at += kStreamChunk) {
    const int64_t c = std::min(kStreamChunk, s.n - at);
    f(s.data + at, c);
    release(i, at, c);  // this process keeps none of the chunk (the page cache does)
  }
}

std::string TokenShards::describe() const {
  std::ostringstream os;
  for (const TokenShard& s : shards_) os << s.name << " " << s.n << "\n";
  return os.str();
}

std::vector<double> TokenShards::histogram(int vocab) const {
  std::vector<double> hist(size_t(std::max(vocab, 0)), 0.0);
  for (int i = 0; i < num_shards(); ++i)
    stream(i, [&](const uint16_t* p, int64_t c) {
      for (int64_t j = 0; j < c; ++j)
        if (p[j] < vocab) hist[p[j]] += 1;
    });
  return hist;
}

int reshard_split(const std::string& dir, const std::string& split, int64_t shard_tokens) {
  ANYK_CHECK(shard_tokens >= 0, "--shard-tokens " << shard_tokens << " must be >= 0 hint: 0 writes one "
                                                  << split << ".bin");
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {  // stale shards of an earlier prepare
    const std::string name = e.path().filename().string();
    const std::string key = split + "_";
    if (name.size() == key.size() + 10 && name.rfind(key, 0) == 0 && name.ends_with(".bin") &&
        name.find_first_not_of("0123456789", key.size()) == key.size() + 6)
      fs::remove(e.path(), ec);
  }
  ANYK_CHECK(!ec, "prepare: cannot clear old " << split << " shards in " << dir << ": " << ec.message());
  if (shard_tokens == 0) return 1;
  const std::string single = (fs::path(dir) / (split + ".bin")).string();
  int count = 0;
  {
    std::shared_ptr<const TokenShards> src = TokenShards::map_files({single});
    const TokenShard& s = src->shard(0);
    const int64_t files = std::max<int64_t>((s.n + shard_tokens - 1) / shard_tokens, 1);
    ANYK_CHECK(files <= 999999, "--shard-tokens " << shard_tokens << " cuts " << s.n << " " << split << " tokens into "
                                                  << files << " shards, more than 999999 hint: raise --shard-tokens");
    for (int64_t i = 0; i < files; ++i, ++count) {
      char name[32];
      std::snprintf(name, sizeof(name), "%s_%06lld.bin", split.c_str(), (long long)i);
      const int64_t at = i * shard_tokens, n = std::min(shard_tokens, s.n - at);
      write_shard((fs::path(dir) / name).string(), s.data + at, size_t(n));
    }
  }
  fs::remove(single, ec);
  ANYK_CHECK(!ec, "prepare: cannot remove " << single << " after sharding it: " << ec.message());
  return count;
}

void check_same_shards(const TokenShards& now, const std::string& recorded, const std::string& where) {
  if (recorded.empty()) return;
  std::istringstream in(recorded);
  std::vector<std::pair<std::string, int64_t>> was;
  for (std::string line; std::getline(in, line);) {  // "name tokens"; a name may hold spaces
    const size_t sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    const std::string count = line.substr(sp + 1);
    ANYK_CHECK(!count.empty() && count.find_first_not_of("0123456789") == std::string::npos,
               where << ": bad shard record '" << line << "' hint: the file may be corrupt");
    was.emplace_back(line.substr(0, sp), std::stoll(count));
  }
  const std::string hint = " hint: resume over the data the run started with (the window draw depends on every "
                           "shard's size), or start a new run";
  ANYK_CHECK(int(was.size()) == now.num_shards(),
             "the training data has " << now.num_shards() << " shard(s) (first "
                                      << (now.num_shards() ? now.shard(0).name : "?") << ", "
                                      << (now.num_shards() ? now.shard(0).n : 0) << " tokens) but " << where
                                      << " was written over "
                                      << was.size() << " (first " << (was.empty() ? "?" : was[0].first) << ", "
                                      << (was.empty() ? 0 : was[0].second) << " tokens)" << hint);
  for (int i = 0; i < now.num_shards(); ++i)
    ANYK_CHECK(was[size_t(i)].second == now.shard(i).n,
               "training shard " << i << " " << now.shard(i).name << " holds " << now.shard(i).n << " tokens but "
                                 << where << " was written when " << was[size_t(i)].first << " held "
                                 << was[size_t(i)].second << hint);
}

}  // namespace anyk::data
