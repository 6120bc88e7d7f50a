// Training and eval windows over a split's shards (data/token_shards.h). A training window is a
// pure function of (seed, global sample index, the shards' sizes), so any rank under any layout
// reads the same global batch and a resumed run needs only the stream position.
//
// Windows never cross a shard boundary. Shard i (n_i tokens) has n_i - T valid starts
// [0, n_i - T - 1] (the last target is token n_i - 1); a shard shorter than T + 1 has none. The
// valid starts of all shards, in shard order, are numbered 0 .. S - 1 (a prefix sum), and sample g
// takes number uniform_int(hash(seed, g), S): uniform over every valid window of the split. With
// one shard this is exactly the draw over one array (start in [0, n - T)).
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "data/token_shards.h"

namespace anyk::data {

class Loader {
 public:
  /// At least one shard must hold T + 1 tokens. seed keys the window draws.
  Loader(std::shared_ptr<const TokenShards> shards, int T, uint64_t seed);
  /// One array in memory as a single shard (not copied): tokens (n) with n >= T + 1.
  Loader(std::shared_ptr<const std::vector<uint16_t>> tokens, int T, uint64_t seed);

  /// Window of global sample g at a uniformly drawn valid start (see the file comment).
  /// inputs, targets: (T); targets[t] = inputs[t + 1] in the token stream.
  void sample(int64_t g, int* inputs, int* targets) const;

  /// Samples first .. first+B-1. inputs, targets: (B, T), one row per sample.
  void batch(int64_t first, int B, int* inputs, int* targets) const;

  /// Next global batch of B * world samples starting at position(); rank r gets samples
  /// position + r*B .. position + (r+1)*B - 1, then position advances by B * world.
  /// inputs, targets: (B, T). Concatenated over ranks this equals next(B * world, 0, 1, ...).
  void next(int B, int rank, int world, int* inputs, int* targets);

  int64_t position() const { return position_; }
  void set_position(int64_t pos);

  /// Number of non-overlapping eval windows of length T (0 means seq_len()): the sum over shards
  /// of (n_i - 1) / T (one shard: (n - 1) / T).
  int64_t num_eval_windows(int T = 0) const;
  /// i-th deterministic eval window: the shards tiled in order, each from its token 0 (one shard:
  /// the window starting at token i*T). inputs, targets: (T).
  void eval_window(int64_t i, int* inputs, int* targets) const;

  /// (shard, start) of sample g's window: what sample() copies.
  std::pair<int, int64_t> window_of(int64_t g) const;

  int64_t num_tokens() const { return shards_->num_tokens(); }
  int seq_len() const { return T_; }
  const TokenShards& shards() const { return *shards_; }

 private:
  std::shared_ptr<const TokenShards> shards_;
  std::vector<int64_t> start_prefix_;  // (shards + 1): valid window starts before each shard
  std::vector<int64_t> eval_prefix_;   // (shards + 1): eval windows of length T before each shard
  int T_;
  uint64_t seed_;
  int64_t position_ = 0;
};

}  // namespace anyk::data
