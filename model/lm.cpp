// The MoE transformer LM; see lm.h.
#include "model/lm.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <string>
#include <vector>

#include "kernels/cpu/thread_governor.h"
#include "runtime/device.h"
#include "runtime/rng.h"

namespace anyk {

LM::LM(const ModelConfig& cfg, Dispatcher& dispatcher, Device device)
    : cfg_(cfg), d_(&dispatcher), ps_(cfg.dtype, device) {
  cfg_.validate();
  ANYK_CHECK(dispatcher.num_experts() == cfg.experts,
             "dispatcher has " << dispatcher.num_experts() << " experts, model " << cfg.experts);
  int C = cfg.dim;
  wte_ = ps_.add("wte", {cfg.vocab, C}, Region::Dense, false);
  for (int l = 0; l < cfg.layers; ++l) {
    std::string p = "layers." + std::to_string(l);
    Block b;
    b.ln1 = ps_.add(p + ".ln1", {C}, Region::Dense, false);
    b.wqkv = ps_.add(p + ".attn.wqkv", {3 * C, C}, Region::Dense, true);
    b.wo = ps_.add(p + ".attn.wo", {C, C}, Region::Dense, true);
    b.ln2 = ps_.add(p + ".ln2", {C}, Region::Dense, false);
    b.moe = std::make_unique<MoELayer>(ps_, p + ".moe", C, cfg.expert_hidden, dispatcher);
    blocks_.push_back(std::move(b));
  }
  lnf_ = ps_.add("lnf", {C}, Region::Dense, false);
  ps_.finalize();
}

// Each value is a pure function of (seed, name, global index), so the draws are split over the
// host's threads in chunks and each chunk is copied to the parameter's device as it is made: the
// same bits for any thread count and device. (On the host, not in a device kernel: a GPU's log and
// cos are not guaranteed to round like glibc's, and the bits must not depend on the device.)
void LM::init(uint64_t seed) {
  const double out_std = cfg_.init_std / std::sqrt(2.0 * cfg_.layers);
  constexpr int64_t kChunk = int64_t(1) << 22;  // elements per host staging chunk (16 MiB in f32)
  for (int id = 0; id < ps_.size(); ++id) {
    const ParamInfo& info = ps_.info(id);
    const std::string& n = info.name;
    bool norm = n == "lnf" || n.ends_with(".ln1") || n.ends_with(".ln2");
    bool out_proj = n.ends_with(".attn.wo") || n.ends_with(".experts.w2");
    double std = out_proj ? out_std : cfg_.init_std;
    // Expert tensors hold E_local experts; index elements by global expert id.
    int64_t base = 0;
    if (info.region == Region::Expert)
      base = int64_t(d_->first_expert()) * (info.shape.numel() / info.shape[0]);
    uint64_t stream = hash_name(n);
    Tensor t = ps_.value(id);
    dispatch(t.dtype, [&](auto tag) {
      using T = decltype(tag);
      std::vector<T> p(size_t(std::min(t.numel(), kChunk)));
      for (int64_t c0 = 0; c0 < t.numel(); c0 += kChunk) {
        const int64_t len = std::min(kChunk, t.numel() - c0);
#pragma omp parallel for schedule(static) if (len >= 65536)
        for (int64_t i = 0; i < len; ++i)
          p[size_t(i)] = norm ? T(1) : T(std * normal_from(hash_key(seed, stream, uint64_t(base + c0 + i))));
        Tensor part = t;
        part.data = t.dev_ptr<T>() + c0;
        part.shape = Shape{len};
        from_host(part, p.data());
      }
    });
  }
}

std::pair<Tensor, Tensor> LM::upload_tokens(Tape& tape, const int* inputs, const int* targets, int64_t n) const {
  const Device dev = ps_.device();
  auto host = [&](const int* p) {
    Tensor t;
    t.data = const_cast<int*>(p);
    t.shape = Shape{n};
    t.dtype = DType::I32;
    return t;
  };
  if (dev == Device::CPU) return {host(inputs), targets ? host(targets) : Tensor{}};
  const int64_t parts = targets ? 2 : 1;
  Tensor block = tape.arena().tensor({parts * n}, DType::I32);
  std::vector<int32_t> packed(size_t(parts * n));
  std::copy(inputs, inputs + n, packed.begin());
  if (targets) std::copy(targets, targets + n, packed.begin() + n);
  from_host(block, packed.data());
  Tensor in = block, tg = block;
  in.shape = Shape{n};
  tg.shape = Shape{n};
  tg.data = block.dev_ptr<int32_t>() + n;
  return {in, targets ? tg : Tensor{}};
}

Var LM::forward(Tape& tape, const int* inputs, const int* targets, int B, int T,
                std::span<const int> k, ForwardStats* stats, double loss_norm,
                std::span<const int> pool, uint64_t sample_key) const {
  auto [in, tg] = upload_tokens(tape, inputs, targets, int64_t(B) * T);
  return forward(tape, in, tg, B, T, k, stats, loss_norm, pool, sample_key);
}

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::None;
  if (name == "layer") return Recompute::Layer;
  ANYK_FAIL("--recompute '" << name << "' is not a recompute mode hint: use none (keep every layer's "
                               "activations) or layer (recompute each layer's forward in the backward)");
}

const char* recompute_name(Recompute r) { return r == Recompute::Layer ? "layer" : "none"; }

Var LM::block(Tape& tape, int l, const Var& x_in, int B, int T, int k, const RouterOptions& ro, Var* aux,
              MoEStats* st) const {
  const int C = cfg_.dim, NH = cfg_.heads, D = C / NH, N = B * T;
  const Block& b = blocks_[l];
  Var h = rmsnorm(tape, x_in, ps_.var(b.ln1), cfg_.norm_eps);
  Var qkv = linear(tape, h, ps_.var(b.wqkv));                               // (N,C) -> (N,3C)
  qkv = rope(tape, view(qkv, {B, T, 3 * NH, D}), 2 * NH, cfg_.rope_theta);  // q, k heads rotated
  Var att = attention(tape, view(qkv, {B, T, 3 * C}), NH);                  // (B,T,3C) -> (B,T,C)
  Var a = linear(tape, view(att, {N, C}), ps_.var(b.wo));                   // (N,C)
  Var x = add(tape, x_in, a);
  h = rmsnorm(tape, x, ps_.var(b.ln2), cfg_.norm_eps);
  Var m = b.moe->forward(tape, h, k, ro, aux, st);
  return add(tape, x, m);
}

// What the recompute of block l needs: everything its forward read, by value (the K drawn for
// this micro-batch and the EMoE sample key are replayed, never drawn again). Trivially
// destructible: it lives in the tape's host arena. st and lb, z, kl serve the forward run only:
// the router losses are copied out of the segment's memory before it is given back.
struct LM::BlockArgs {
  const LM* lm;
  int l, B, T, k;
  RouterOptions ro;
  MoEStats* st;
  Tensor lb, z, kl;
};

void LM::run_block(const void* args, Tape& tape, const Var* in, Var* out, bool first) {
  const BlockArgs& a = *static_cast<const BlockArgs*>(args);
  MoEStats* st = first ? a.st : nullptr;
  out[0] = a.lm->block(tape, a.l, in[0], a.B, a.T, a.k, a.ro, &out[1], st);
  if (!st) return;
  copy(a.lb, st->lb_t);
  copy(a.z, st->z_t);
  copy(a.kl, st->kl_t);
  st->lb_t = a.lb;
  st->z_t = a.z;
  st->kl_t = a.kl;
}

Var LM::block_checkpointed(Tape& tape, int l, const Var& x, int B, int T, int k, const RouterOptions& ro,
                           Var* aux, MoEStats* st) const {
  void* mem = tape.host_arena().alloc(sizeof(BlockArgs), alignof(BlockArgs) < 64 ? 64 : alignof(BlockArgs));
  BlockArgs* a = new (mem) BlockArgs{this, l, B, T, k, ro, st, {}, {}, {}};
  if (st) {
    a->lb = tape.arena().tensor({1}, DType::F64);
    a->z = tape.arena().tensor({1}, DType::F64);
    a->kl = tape.arena().tensor({1}, DType::F64);
  }
  // The block's output keeps its input's storage (the residual stream); the aux loss is a
  // scalar of the compute dtype (router_aux).
  Var out[2] = {tape.make_like(x, x.shape(), true), tape.make({1}, x.dtype(), true)};
  checkpoint(tape, CheckpointSegment{&LM::run_block, a}, &x, 1, out, 2);
  *aux = out[1];
  return out[0];
}

namespace {
// Every layer's router losses in one device -> host copy (packed on the device first).
void read_layer_losses(Tape& tape, std::vector<MoEStats>& layers) {
  const int L = int(layers.size());
  if (L == 0 || !layers[0].lb_t.defined()) return;
  Tensor all = tape.arena().tensor({3 * L}, DType::F64);
  for (int l = 0; l < L; ++l) {
    const Tensor* src[] = {&layers[l].lb_t, &layers[l].z_t, &layers[l].kl_t};
    for (int j = 0; j < 3; ++j) {
      Tensor dst = *src[j];
      dst.data = all.dev_ptr<double>() + 3 * l + j;
      copy(dst, *src[j]);  // device to device, no host sync
    }
  }
  std::vector<double> h = to_host_vector<double>(all);
  for (int l = 0; l < L; ++l) {
    layers[l].lb = h[3 * l];
    layers[l].z = h[3 * l + 1];
    layers[l].kl = h[3 * l + 2];
  }
}
}  // namespace

Var LM::forward(Tape& tape, const Tensor& inputs, const Tensor& targets, int B, int T,
                std::span<const int> k, ForwardStats* stats, double loss_norm,
                std::span<const int> pool, uint64_t sample_key) const {
  const int N = B * T;
  ANYK_CHECK(pool.empty() || int(pool.size()) == cfg_.layers,
             "forward needs one EMoE pool size per layer: got " << pool.size());
  ANYK_CHECK(int(k.size()) == cfg_.layers,
             "forward needs one K per layer: got " << k.size() << " for " << cfg_.layers << " layers");
  for (int l = 0; l < cfg_.layers; ++l)
    ANYK_CHECK(k[l] >= 1 && k[l] <= cfg_.experts,
               "K = " << k[l] << " at layer " << l << " is outside [1, E=" << cfg_.experts << "]");
  if (stats) {
    stats->layers.assign(cfg_.layers, MoEStats{});
    for (auto& ls : stats->layers) ls.capture = stats->capture_router;
  }

  ANYK_CHECK(inputs.numel() == N && (!targets.defined() || targets.numel() == N),
             "forward: " << inputs.numel() << " inputs for B*T = " << N << " tokens");
  Var x = embedding(tape, inputs, ps_.var(wte_));  // (N,C)
  Var aux_total;
  const bool ckpt = recompute_ == Recompute::Layer && tape.grad_enabled();
  for (int l = 0; l < cfg_.layers; ++l) {
    cpu::governor_tick();  // the thread count for this layer (kernels/cpu/thread_governor.h)
    Var aux;
    RouterOptions ro = cfg_.router;
    if (!pool.empty() && pool[l] > k[l]) {
      ro.pool = pool[l];
      ro.sample_key = hash_key(sample_key, uint64_t(l));
    }
    MoEStats* st = stats ? &stats->layers[l] : nullptr;
    x = ckpt ? block_checkpointed(tape, l, x, B, T, k[l], ro, &aux, st) : block(tape, l, x, B, T, k[l], ro, &aux, st);
    aux_total = l == 0 ? aux : add(tape, aux_total, aux);
  }
  x = rmsnorm(tape, x, ps_.var(lnf_), cfg_.norm_eps);
  Var logits = linear(tape, x, ps_.var(wte_));  // tied head: (N,C) -> (N,V)
  if (stats) read_layer_losses(tape, stats->layers);
  if (!targets.defined()) return logits;
  Var ce = cross_entropy(tape, logits, targets, loss_norm);
  // Under accumulation / data parallelism each call's aux loss is weighted by its token share,
  // so the summed gradients equal those of one call over the whole global batch.
  if (loss_norm > 0 && loss_norm != double(N)) aux_total = scale(tape, aux_total, double(N) / loss_norm);
  Var loss = add(tape, ce, aux_total);
  if (stats) {
    dispatch(ce.dtype(), [&](auto tag) {
      using TT = decltype(tag);
      stats->ce = double(read_element<TT>(ce.val));
      stats->aux = double(read_element<TT>(aux_total.val));
    });
  }
  return loss;
}

}  // namespace anyk
