// Inference with a KV cache at any K: the decoder that extends each sequence's per-layer keys and
// values token by token (a prompt in one batched pass, then one token per step), next-token
// sampling, and the generation loop behind `anyk generate` and `anyk eval --frontier`.
// Inference only: nothing is recorded for backward. The decoder runs on the LM's device: the
// caches and scratch live there, parameters are read in place from the LM's store, and the kernel
// table of that device does the arithmetic (the training ops' kernels; the only new ones are the
// attention of new queries over cached keys and the few-row matmul). The host sees the device
// through the copy ops only: token ids go up once per forward, each layer's routed ids come back
// (the expert sort is planned on the host, as the training dispatcher does), logits come back once.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "model/lm.h"
#include "runtime/arena.h"
#include "runtime/device.h"

namespace anyk {

// How many experts each token activates at inference.
struct InferenceK {
  std::vector<int> k;  // (L) K of each layer; under top_p, the cap of that layer's per-token K
  double top_p = 0;    // > 0: per token, the smallest k whose top-k router mass reaches top_p, in [1, k[l]]
};

// New tokens for one sequence (slot) of the cache, appended at that sequence's next positions.
// Each segment may carry its own K (a server's requests at different K share one pass): its rows
// are routed with that K per layer (or its per-token top-p K), the others' with theirs.
struct Segment {
  int slot = 0;
  const int* tokens = nullptr;  // (n)
  int n = 0;
  const InferenceK* k = nullptr;  // this segment's K; null: the K given to forward
  int64_t* routed = nullptr;      // (L) when given: += the experts routed for these rows at each layer
};

// The weights a decoder's matrices read: the LM's own (f32: the default, the training forward's
// bits), or a bf16 copy made when the decoder is built (half the bytes per decode step: the packed
// attention projections, the output projection, the experts' w13 and w2, and the tied embedding
// and head; norms and routers stay f32). bf16 logits are not the f32 ones: each weight moves by up
// to 2^-9 of itself; they are bit for bit those of an f32 decoder over the same weights rounded to
// bf16 (round to nearest even). CPU and f32 models only.
enum class DecodeWeights { f32, bf16 };

// Keys and values of every layer for up to `slots` sequences of up to `capacity` tokens each
// (capacity <= the model's seq_len: positions stay inside the trained context), and the forward
// pass that extends them. The LM must hold every expert (a LocalDispatcher) and outlive this.
class KVDecoder {
 public:
  // capacity 0: the model's seq_len. weights bf16: a bf16 copy of the matrices (DecodeWeights),
  // made here: changes to the LM's weights after this are not seen.
  KVDecoder(const LM& lm, int slots, int capacity = 0, DecodeWeights weights = DecodeWeights::f32);
  ~KVDecoder();

  // One batched pass over every segment's tokens: embedding, norms, projections and the MoE run
  // over all rows together; each segment's queries attend to its own cached keys (causally).
  // Appends the segments' keys and values to their slots. logits (rows, V): the last token of
  // each segment, in segment order, or every token when all_logits. Slots must be distinct and
  // have room for their n tokens.
  // A segment's result does not depend on the others' K: its rows are routed as if alone.
  void forward(std::span<const Segment> segs, const InferenceK& k, std::vector<double>& logits,
               bool all_logits = false);

  // Row-invariant passes: every matmul takes the few-row kernel, whose rows are computed
  // independently, so a row's bits do not depend on how many rows share the pass (the GEMM's
  // blocking does depend on it). A server's decode steps use this, so a request's tokens are the
  // same at any batch; off (the default), passes of more than 16 rows use the GEMM.
  void set_row_invariant(bool on) { row_invariant_ = on; }

  void reset(int slot);            // forget that sequence
  int length(int slot) const;      // tokens cached for it
  int capacity() const { return cap_; }
  int slots() const { return slots_; }

  // Routed (token, expert) pairs and token-layer rows processed so far: their ratio is the mean
  // K actually used (below the forced K only under top_p).
  int64_t assignments() const { return assignments_; }
  int64_t token_layers() const { return token_layers_; }
  // Experts that received at least one row, summed over MoE layer passes (the expert weights read).
  int64_t experts_read() const { return experts_read_; }

 private:
  void check_k(const InferenceK& k) const;
  template <class T> void forward_t(std::span<const Segment> segs, const InferenceK& k,
                                    std::vector<double>& logits, bool all_logits);
  struct LayerIds {
    int ln1, wqkv, wo, ln2, router, w13, w2;
  };
  template <class T> struct Pass;  // one forward's sizes and scratch (generate.cpp)
  template <class T> Pass<T> make_pass(std::span<const Segment> segs, const InferenceK& k);
  template <class T> void attention_t(Pass<T>& p, int l, std::span<const Segment> segs);
  template <class T> void moe_t(Pass<T>& p, int l, std::span<const Segment> segs, const InferenceK& k);
  template <class T> int route_t(Pass<T>& p, int l, std::span<const Segment> segs, const InferenceK& k);
  template <class T> void head_t(Pass<T>& p, std::vector<double>& logits, bool all_logits);
  template <class T> void embed_t(Pass<T>& p);
  // The bf16 copy of parameter id (null: none, read the f32 value).
  const uint16_t* w16(int id) const { return w16_.empty() || w16_[size_t(id)].empty() ? nullptr : w16_[size_t(id)].data(); }
  void make_bf16_copy();
  const LM* lm_;
  Device dev_;  // the LM's device: caches, scratch and every kernel call
  int slots_, cap_;
  int wte_, lnf_;
  std::vector<LayerIds> layers_;
  std::vector<int> len_;
  DeviceBuffer kv_;    // (slots, L, 2, cap, C): keys then values of each layer
  DeviceBuffer rope_;  // (2, cap, D/2): cos then sin of every position
  Arena arena_;        // device scratch of one forward, rewound at each call
  Arena host_;         // host side of one forward (ids, the expert sort, logits), rewound too
  int64_t assignments_ = 0, token_layers_ = 0;
  bool row_invariant_ = false;
  int64_t experts_read_ = 0;
  std::vector<std::vector<uint16_t>> w16_;  // by parameter id, in bf16 mode: the matrices' bf16 bits
  std::vector<float> wide_;                 // bf16 mode: a matrix widened for the GEMM of long passes
};

// Next-token choice from logits (V).
struct SampleOptions {
  double temperature = 0;  // 0: greedy (arg-max, lowest id on ties)
  int top_k = 0;           // > 0: sample only among the top_k logits
  uint64_t seed = 0;
  double top_p = 1;  // < 1: nucleus, only the most likely tokens whose probability first reaches top_p
};
// u in [0, 1) is the uniform draw used when temperature > 0.
int sample_token(const double* logits, int V, const SampleOptions& o, double u);
// The uniform draw of generation step `step` (the same for every sequence of a batch, so a
// prompt's text does not depend on what it is batched with).
double sample_uniform(uint64_t seed, int64_t step);

struct GenerateOptions {
  InferenceK k;
  SampleOptions sample;
  int max_new = 64;
  int window = 0;  // context window W (0: the model's seq_len)
  DecodeWeights weights = DecodeWeights::f32;  // the decoder's matrices (see DecodeWeights)
};

struct GenerateStats {
  int64_t prompt_tokens = 0;   // tokens of every prompt
  int64_t decoded = 0;         // tokens whose logits came from decode steps (after the prompt pass)
  int64_t generated = 0;       // tokens produced
  int64_t slides = 0;          // window slides (re-reads of the last W/2 tokens)
  double prompt_seconds = 0;   // the batched prompt pass
  double decode_seconds = 0;   // every step after it (sampling and callbacks included)
  double decode_cpu_seconds = 0;  // the process's CPU time over those steps (all its threads)
  double mean_k = 0;           // routed experts per token per layer, over every pass
  double decode_experts = 0;   // distinct experts read per layer per decode step (mean)
  double prompt_tps() const { return prompt_seconds > 0 ? prompt_tokens / prompt_seconds : 0; }
  double decode_tps() const { return decode_seconds > 0 ? decoded / decode_seconds : 0; }
};

// The window rule: a sequence's context is its tokens from a start index on; when appending one
// more would make it longer than W, the context restarts at the last window_keep(W) tokens (which
// are read again in one pass). The model therefore never sees a position >= W.
int window_keep(int W);

// Generates max_new tokens after each prompt, all prompts in one batch: one batched pass over the
// prompts, then one token per prompt per step. on_token(i, token) is called as each token of
// prompt i is produced. Every prompt must be non-empty and at most W tokens long.
std::vector<std::vector<int>> generate(const LM& lm, const std::vector<std::vector<int>>& prompts,
                                       const GenerateOptions& o,
                                       const std::function<void(int, int)>& on_token = {},
                                       GenerateStats* stats = nullptr);

}  // namespace anyk
