// Loader: counter-based random training windows (hash of seed and global sample index) and
// sequential non-overlapping eval windows.
#include "data/loader.h"

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
    : tokens_(std::move(tokens)), T_(T), seed_(seed) {
  ANYK_CHECK(tokens_, "Loader: null token array hint: load a shard first");
  ANYK_CHECK(T_ >= 1, "Loader: seq_len " << T_ << " must be >= 1 hint: pass --seq-len > 0");
  const int64_t n = num_tokens();
  ANYK_CHECK(n >= static_cast<int64_t>(T_) + 1,
             "Loader: " << n << " tokens cannot hold one window of T=" << T_ << " (+1 target)"
                        << " hint: use a smaller --seq-len or more data");
}

void Loader::sample(int64_t g, int* inputs, int* targets) const {
  const uint64_t h = hash_key(seed_, kLoaderStream, static_cast<uint64_t>(g));
  const int64_t start = static_cast<int64_t>(uniform_int(h, static_cast<uint64_t>(num_tokens() - T_)));
  copy_window(tokens_->data(), start, T_, inputs, targets);
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
  return (num_tokens() - 1) / T;
}

void Loader::eval_window(int64_t i, int* inputs, int* targets) const {
  ANYK_CHECK(i >= 0 && i < num_eval_windows(),
             "Loader::eval_window: window " << i << " is outside [0, " << num_eval_windows() << ")");
  copy_window(tokens_->data(), i * T_, T_, inputs, targets);
}

}  // namespace anyk::data
