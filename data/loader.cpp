// Loader: counter-based random training windows (hash of seed and global sample index, mapped
// onto the shards' valid starts by a prefix sum) and sequential non-overlapping eval windows.
#include "data/loader.h"

#include <algorithm>
#include <utility>

#include "core/check.h"
#include "runtime/rng.h"

namespace anyk::data {

namespace {
constexpr uint64_t kLoaderStream = 0x10ADE5;

inline void copy_window(const uint16_t* tok, int64_t start, int T, int* inputs, int* targets) {
  for (int t = 0; t < T; ++t) {
    inputs[t] = tok[start + t];
    targets[t] = tok[start + t + 1];
  }
}
}  // namespace

Loader::Loader(std::shared_ptr<const std::vector<uint16_t>> tokens, int T, uint64_t seed)
    : Loader(tokens ? TokenShards::in_memory({std::move(tokens)}) : nullptr, T, seed) {}

Loader::Loader(std::shared_ptr<const TokenShards> shards, int T, uint64_t seed)
    : shards_(std::move(shards)), T_(T), seed_(seed) {
  ANYK_CHECK(shards_, "Loader: null token array hint: load a shard first");
  ANYK_CHECK(T_ >= 1, "Loader: seq_len " << T_ << " must be >= 1 hint: pass --seq-len > 0");
  start_prefix_.assign(1, 0);
  eval_prefix_.assign(1, 0);
  int64_t longest = 0;
  for (int i = 0; i < shards_->num_shards(); ++i) {
    const int64_t n = shards_->shard(i).n;
    longest = std::max(longest, n);
    start_prefix_.push_back(start_prefix_.back() + std::max<int64_t>(n - T_, 0));
    eval_prefix_.push_back(eval_prefix_.back() + std::max<int64_t>(n - 1, 0) / T_);
  }
  if (shards_->num_shards() == 1)
    ANYK_CHECK(start_prefix_.back() >= 1,
               "Loader: " << longest << " tokens cannot hold one window of T=" << T_ << " (+1 target)"
                          << " hint: use a smaller --seq-len or more data");
  ANYK_CHECK(start_prefix_.back() >= 1,
             "Loader: none of " << shards_->num_shards() << " shards (longest " << longest
                                << " tokens) holds one window of T=" << T_ << " (+1 target)"
                                << " hint: use a smaller --seq-len or larger shards");
}

std::pair<int, int64_t> Loader::window_of(int64_t g) const {
  const uint64_t h = hash_key(seed_, kLoaderStream, static_cast<uint64_t>(g));
  const int64_t u = static_cast<int64_t>(uniform_int(h, static_cast<uint64_t>(start_prefix_.back())));
  // The shard whose valid starts hold number u: the last prefix <= u (empty shards are skipped).
  const int k = int(std::upper_bound(start_prefix_.begin(), start_prefix_.end(), u) - start_prefix_.begin()) - 1;
  return {k, u - start_prefix_[size_t(k)]};
}

void Loader::sample(int64_t g, int* inputs, int* targets) const {
  const auto [k, start] = window_of(g);
  copy_window(shards_->shard(k).data, start, T_, inputs, targets);
  shards_->release(k, start, T_ + 1);  // a mapped shard stays out of this process's memory
}

void Loader::batch(int64_t first, int B, int* inputs, int* targets) const {
  ANYK_CHECK(B >= 0, "Loader::batch: B " << B << " must be >= 0");
  for (int b = 0; b < B; ++b)
    sample(first + b, inputs + static_cast<int64_t>(b) * T_, targets + static_cast<int64_t>(b) * T_);
}

void Loader::next(int B, int rank, int world, int* inputs, int* targets) {
  ANYK_CHECK(world >= 1 && rank >= 0 && rank < world,
             "Loader::next: rank " << rank << " is outside world " << world);
  batch(position_ + static_cast<int64_t>(rank) * B, B, inputs, targets);
  position_ += static_cast<int64_t>(B) * world;
}

void Loader::set_position(int64_t pos) {
  ANYK_CHECK(pos >= 0, "Loader::set_position: position " << pos << " must be >= 0"
                                                         << " hint: the checkpoint may be corrupt");
  position_ = pos;
}

int64_t Loader::num_eval_windows(int T) const {
  if (T == 0) T = T_;
  ANYK_CHECK(T >= 1, "Loader::num_eval_windows: T " << T << " must be >= 1");
  if (T == T_) return eval_prefix_.back();
  int64_t w = 0;
  for (int i = 0; i < shards_->num_shards(); ++i) w += std::max<int64_t>(shards_->shard(i).n - 1, 0) / T;
  return w;
}

void Loader::eval_window(int64_t i, int* inputs, int* targets) const {
  ANYK_CHECK(i >= 0 && i < num_eval_windows(),
             "Loader::eval_window: window " << i << " is outside [0, " << num_eval_windows() << ")");
  const int k = int(std::upper_bound(eval_prefix_.begin(), eval_prefix_.end(), i) - eval_prefix_.begin()) - 1;
  copy_window(shards_->shard(k).data, (i - eval_prefix_[size_t(k)]) * T_, T_, inputs, targets);
  shards_->release(k, (i - eval_prefix_[size_t(k)]) * T_, T_ + 1);
}

}  // namespace anyk::data
