// A split's tokens as a list of shards, each a read-only view: either an llm.c shard file mapped
// with mmap (never read whole into memory: pages come from the page cache as windows touch them,
// and the node's ranks share them) or an array in memory (tests, callers that already hold one).
//
// A data directory holds each split as one file (train.bin, val.bin) or as several shards whose
// names contain `<split>_` and end in `.bin` (train_000000.bin ..., or llm.c's
// fineweb_train_000001.bin ...), taken in name order. Both layouts in one directory is an error.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace anyk::data {

struct TokenShard {
  std::string name;               // file name (no directory) or a label for arrays in memory
  const uint16_t* data = nullptr;  // (n)
  int64_t n = 0;
};

class TokenShards {
 public:
  /// Opens the shard files of `split` ("train", "val") in dir, mapped read-only. Every header is
  /// checked (data/shard.h); if vocab > 0 every token must be < vocab (checked by streaming over
  /// each mapping once, releasing its pages as it goes). Errors are one line naming the file.
  static std::shared_ptr<const TokenShards> open(const std::string& dir, const std::string& split, int vocab = 0);
  /// Maps the given shard files in this order.
  static std::shared_ptr<const TokenShards> map_files(const std::vector<std::string>& paths, int vocab = 0);
  /// Arrays in memory, one shard each, kept alive by the returned object (no copy).
  static std::shared_ptr<const TokenShards> in_memory(std::vector<std::shared_ptr<const std::vector<uint16_t>>> arrays);

  /// The shard file paths of `split` in dir in the order they are read (see the file comment).
  static std::vector<std::string> split_paths(const std::string& dir, const std::string& split);

  ~TokenShards();
  TokenShards(const TokenShards&) = delete;
  TokenShards& operator=(const TokenShards&) = delete;

  int num_shards() const { return int(shards_.size()); }
  const TokenShard& shard(int i) const { return shards_[size_t(i)]; }
  int64_t num_tokens() const { return total_; }
  /// Bytes of token arrays held in this process's own memory (0 when every shard is mapped).
  int64_t resident_bytes() const { return resident_; }
  /// Whether shard i comes from a file, mapped (an empty file has nothing to map), rather than
  /// from an array in memory.
  bool mapped(int i) const { return from_files_ && i >= 0 && i < num_shards(); }
  /// One line per shard, "name tokens": what a checkpoint records to refuse a changed corpus.
  std::string describe() const;
  /// Drops this process's mapping of the pages around tokens [at, at + n) of shard i (the aligned
  /// 2 MiB blocks that hold them: the kernel maps whole folios and neighbours on a fault). The
  /// pages stay in the page cache; the next read is a minor fault. No-op for arrays in memory.
  void release(int i, int64_t at, int64_t n) const;
  /// Count of each token value over all shards, (vocab); streams like the vocab check.
  std::vector<double> histogram(int vocab) const;

 private:
  TokenShards() = default;
  struct Map {
    void* addr = nullptr;
    size_t len = 0;
  };
  void add(TokenShard s, Map m);
  // Calls f(ptr, count) over shard i in chunks; a mapped chunk's pages are released afterwards so
  // a full pass does not leave the whole file resident in this process.
  template <class F>
  void stream(int i, F&& f) const;

  std::vector<TokenShard> shards_;
  std::vector<Map> maps_;  // parallel to shards_; addr null for arrays in memory and empty files
  std::vector<std::shared_ptr<const std::vector<uint16_t>>> keep_;
  int64_t total_ = 0, resident_ = 0;
  bool from_files_ = false;
};

/// `anyk prepare --shard-tokens N`: rewrites dir/<split>.bin as dir/<split>_000000.bin, ... of N
/// tokens each (the last may be shorter) and removes <split>.bin. N == 0 keeps the single file.
/// Either way, shards named <split>_<6 digits>.bin left by an earlier prepare are removed first,
/// so the directory holds one layout. Returns the number of files the split now has.
int reshard_split(const std::string& dir, const std::string& split, int64_t shard_tokens);

/// Refuses a split whose shard sizes differ from `recorded` (a describe() text, e.g. from a
/// checkpoint): the window draw depends on them, so a resume over them would read other windows.
/// Names may differ (a renamed copy draws the same windows). One line naming the first
/// difference; `where` names the record (e.g. the checkpoint's meta.h5). Empty `recorded`: no check.
void check_same_shards(const TokenShards& now, const std::string& recorded, const std::string& where);

}  // namespace anyk::data
