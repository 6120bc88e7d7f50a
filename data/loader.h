// Training and eval windows over one token array. A training window is a pure function of
// (seed, global sample index), so any rank under any layout reads the same global batch and a
// resumed run needs only the stream position.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace anyk::data {

class Loader {
 public:
  /// tokens: (n) with n >= T + 1. seed keys the window draws.
  Loader(std::shared_ptr<const std::vector<uint16_t>> tokens, int T, uint64_t seed);

  /// Window of global sample g at a random start in [0, n - T).
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

  /// Number of non-overlapping eval windows of length T (0 means seq_len()): (n - 1) / T.
  int64_t num_eval_windows(int T = 0) const;
  /// i-th deterministic eval window, starting at token i*T. inputs, targets: (T).
  void eval_window(int64_t i, int* inputs, int* targets) const;

  int64_t num_tokens() const { return static_cast<int64_t>(tokens_->size()); }
  int seq_len() const { return T_; }

 private:
  std::shared_ptr<const std::vector<uint16_t>> tokens_;  // (n)
  int T_;
  uint64_t seed_;
  int64_t position_ = 0;
};

}  // namespace anyk::data
