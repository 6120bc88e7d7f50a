// The MoE transformer language model: embedding (tied LM head) -> L pre-norm blocks of
// [RMSNorm -> causal attention (RoPE) -> residual -> RMSNorm -> MoE -> residual] -> RMSNorm ->
// logits -> cross-entropy (+ the routers' auxiliary losses). Every forward takes the K of each
// layer, so any K, per layer, works at any call.
#pragma once
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/moe.h"
#include "parallel/dispatcher.h"
#include "runtime/params.h"

namespace anyk {

struct ForwardStats {
  bool capture_router = false;  // in: fill each layer's probs and ids (see MoEStats)
  double ce = 0;    // mean cross-entropy over this call's tokens (nats)
  double aux = 0;   // sum of the routers' auxiliary losses
  std::vector<MoEStats> layers;
};

// Activation recompute (--recompute). None: every layer's activations stay alive until the
// backward. Layer: each block keeps only its input and output; its forward runs again, on a child
// tape, when the backward reaches it (runtime/tape.h checkpoint), so one block's activations are
// alive at a time. Gradients are the same bits either way.
enum class Recompute { None, Layer };
Recompute parse_recompute(const std::string& name);  // "none" | "layer"; the error names both
const char* recompute_name(Recompute r);

class LM {
 public:
  // The dispatcher decides which experts are local (all of them for LocalDispatcher). Parameters
  // and gradients live on `device`; run forward with an arena of the same device.
  LM(const ModelConfig& cfg, Dispatcher& dispatcher, Device device = Device::CPU);

  // Deterministic initialisation: every value is a pure function of (seed, parameter name,
  // global element index), so the same seed gives the same model under any expert layout.
  void init(uint64_t seed);

  // inputs, targets: (B,T) token ids; targets may be null (then the returned Var is the
  // logits (B*T,V) and no loss is computed). k: one K per layer (k.size() == L).
  // loss_norm > 0 divides the summed token losses by it (global token count under data
  // parallelism); 0 means this call's B*T. Returns the scalar total loss (CE + aux).
  // pool (optional, L values): EMoE pool sizes (0 or <= K: plain top-K), with sample_key
  // keying each token's draw (mixed with the layer index).
  // inputs, targets are I32 (B*T) tensors on the model's device (targets may be undefined).
  Var forward(Tape& tape, const Tensor& inputs, const Tensor& targets, int B, int T,
              std::span<const int> k, ForwardStats* stats = nullptr, double loss_norm = 0,
              std::span<const int> pool = {}, uint64_t sample_key = 0) const;
  // The same from host token ids: uploaded with upload_tokens first.
  Var forward(Tape& tape, const int* inputs, const int* targets, int B, int T,
              std::span<const int> k, ForwardStats* stats = nullptr, double loss_norm = 0,
              std::span<const int> pool = {}, uint64_t sample_key = 0) const;
  // Host inputs and targets (n each; targets may be null) as I32 tensors on the model's device,
  // in the tape's arena: one host -> device copy for both (views of the host memory on the CPU).
  std::pair<Tensor, Tensor> upload_tokens(Tape& tape, const int* inputs, const int* targets, int64_t n) const;

  // Under Recompute::Layer, forwards with grad on checkpoint every block (the default is None).
  void set_recompute(Recompute r) { recompute_ = r; }
  Recompute recompute() const { return recompute_; }

  const ModelConfig& config() const { return cfg_; }
  ParamStore& params() { return ps_; }
  const ParamStore& params() const { return ps_; }
  const Dispatcher& dispatcher() const { return *d_; }

 private:
  struct Block {
    int ln1, wqkv, wo, ln2;
    std::unique_ptr<MoELayer> moe;
  };
  // Block l: x (B*T,C) -> x + attention + MoE (pre-norm); *aux gets its router loss.
  Var block(Tape& tape, int l, const Var& x, int B, int T, int k, const RouterOptions& ro, Var* aux,
            MoEStats* st) const;
  // The same as a checkpointed segment (Recompute::Layer).
  struct BlockArgs;
  Var block_checkpointed(Tape& tape, int l, const Var& x, int B, int T, int k, const RouterOptions& ro,
                         Var* aux, MoEStats* st) const;
  static void run_block(const void* args, Tape& tape, const Var* in, Var* out, bool first);
  ModelConfig cfg_;
  Dispatcher* d_;
  ParamStore ps_;
  int wte_, lnf_;
  std::vector<Block> blocks_;
  Recompute recompute_ = Recompute::None;
};

}  // namespace anyk
