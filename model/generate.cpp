// KV-cache decoding, sampling and the generation loop; see generate.h. The forward mirrors
// LM::forward op for op (same kernels, same order), with the attention reading the cache.
#include "model/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <string>
#include <type_traits>

#include "kernels/cpu/kernels.h"
#include "kernels/cpu/thread_governor.h"
#include "kernels/kernels.h"
#include "model/moe_ops.h"
#include "parallel/dispatch_plan.h"
#include "runtime/ops/ops.h"
#include "runtime/rng.h"

namespace anyk {

namespace {

int param_id(const ParamStore& ps, const std::string& name) {
  int id = ps.find(name);
  ANYK_CHECK(id >= 0, "the model has no parameter '" << name << "'");
  return id;
}

// Decode steps multiply a few rows by each weight matrix: stream the weights once
// (linear_rows_forward) instead of packing them for a GEMM; longer passes (prompts) use the GEMM.
constexpr int kFewRows = 16;

// rows: always the few-row kernel (row-invariant passes, KVDecoder::set_row_invariant).
// w16 (f32 models on the CPU, DecodeWeights::bf16): the weights' bf16 bits, read instead of w: the
// few-row kernel widens them as it loads them; the GEMM gets them widened into *wide first (a long
// pass: the copy costs little beside its arithmetic). Either way the bits of the f32 path over the
// widened weights.
template <class T>
void matmul(const Kernels<T>& kn, const Ctx& ctx, T* out, const T* x, const T* w, int M, int I, int O,
            bool rows, const uint16_t* w16 = nullptr, std::vector<float>* wide = nullptr) {
  if constexpr (std::is_same_v<T, float>) {
    if (w16) {
      if (rows || M <= kFewRows) return cpu::linear_rows_forward_bf16(out, x, w16, M, I, O);
      wide->resize(size_t(O) * size_t(I));
      cpu::from_bf16(wide->data(), w16, int64_t(O) * I);
      return kn.linear_forward(ctx, out, x, wide->data(), M, I, O);
    }
  }
  if (rows || M <= kFewRows) kn.linear_rows_forward(ctx, out, x, w, M, I, O);
  else kn.linear_forward(ctx, out, x, w, M, I, O);
}

// Per-expert matmul over contiguous row blocks (as grouped_linear_forward), each block by matmul.
// offsets (E+1) are host memory; out, x, w device memory.
template <class T>
void grouped(const Kernels<T>& kn, const Ctx& ctx, T* out, const T* x, const T* w, const int* offsets, int E,
             int I, int O, bool rows, const uint16_t* w16, std::vector<float>* wide) {
  for (int e = 0; e < E; ++e) {
    const int r0 = offsets[e], n = offsets[e + 1] - offsets[e];
    if (n > 0)
      matmul<T>(kn, ctx, out + int64_t(r0) * O, x + int64_t(r0) * I, w + int64_t(e) * O * I, n, I, O, rows,
                w16 ? w16 + int64_t(e) * O * I : nullptr, wide);
  }
}

}  // namespace

KVDecoder::KVDecoder(const LM& lm, int slots, int capacity, DecodeWeights weights)
    : lm_(&lm), dev_(lm.params().device()), slots_(slots), arena_(size_t(16) << 20, dev_), host_(size_t(1) << 20) {
  const ModelConfig& c = lm.config();
  cap_ = capacity > 0 ? capacity : c.seq_len;
  ANYK_CHECK(slots >= 1, "the decoder needs at least one sequence slot, got " << slots);
  ANYK_CHECK(cap_ <= c.seq_len, "cache capacity " << cap_ << " exceeds the model's context (seq_len "
                                                  << c.seq_len << ")");
  ANYK_CHECK(lm.dispatcher().num_local() == c.experts,
             "generation needs every expert in this process (a LocalDispatcher); this model holds "
                 << lm.dispatcher().num_local() << " of " << c.experts);
  const ParamStore& ps = lm.params();
  wte_ = param_id(ps, "wte");
  lnf_ = param_id(ps, "lnf");
  for (int l = 0; l < c.layers; ++l) {
    const std::string p = "layers." + std::to_string(l);
    layers_.push_back(LayerIds{param_id(ps, p + ".ln1"), param_id(ps, p + ".attn.wqkv"),
                               param_id(ps, p + ".attn.wo"), param_id(ps, p + ".ln2"),
                               param_id(ps, p + ".moe.router"), param_id(ps, p + ".moe.experts.w13"),
                               param_id(ps, p + ".moe.experts.w2")});
  }
  if (weights == DecodeWeights::bf16) make_bf16_copy();
  len_.assign(size_t(slots), 0);
  const size_t es = dtype_size(ps.dtype());
  kv_.resize(dev_, size_t(slots) * c.layers * 2 * cap_ * c.dim * es);
  const int D = c.dim / c.heads;
  rope_.resize(dev_, size_t(2) * cap_ * (D / 2) * es);
  dispatch(ps.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* cs = static_cast<T*>(rope_.data());
    kernels<T>(dev_).rope_tables(exec_ctx(dev_), cs, cs + int64_t(cap_) * (D / 2), cap_, D, c.rope_theta);
  });
}

KVDecoder::~KVDecoder() = default;

// The bf16 bits (round to nearest even) of the matrices a decode step reads: the tied embedding
// and head, and each layer's attention projections and experts.
void KVDecoder::make_bf16_copy() {
  const ParamStore& ps = lm_->params();
  ANYK_CHECK(dev_ == Device::CPU && ps.dtype() == DType::F32,
             "bf16 decode weights need an f32 model on the CPU (this one is "
                 << dtype_name(ps.dtype()) << (dev_ == Device::CPU ? " on the CPU" : " on another device")
                 << ") hint: decode with f32 weights");
  w16_.assign(size_t(ps.size()), {});
  std::vector<int> ids{wte_};
  for (const LayerIds& li : layers_) ids.insert(ids.end(), {li.wqkv, li.wo, li.w13, li.w2});
  for (int id : ids) {
    const Tensor& v = ps.value(id);
    w16_[size_t(id)].resize(size_t(v.numel()));
    cpu::to_bf16(w16_[size_t(id)].data(), v.dev_ptr<float>(), v.numel());
  }
}

void KVDecoder::reset(int slot) {
  ANYK_CHECK(slot >= 0 && slot < slots_, "slot " << slot << " is outside [0, " << slots_ << ")");
  len_[size_t(slot)] = 0;
}

int KVDecoder::length(int slot) const {
  ANYK_CHECK(slot >= 0 && slot < slots_, "slot " << slot << " is outside [0, " << slots_ << ")");
  return len_[size_t(slot)];
}

void KVDecoder::check_k(const InferenceK& k) const {
  const ModelConfig& c = lm_->config();
  ANYK_CHECK(int(k.k.size()) == c.layers,
             "inference needs one K per layer: got " << k.k.size() << " for " << c.layers << " layers");
  for (int l = 0; l < c.layers; ++l)
    ANYK_CHECK(k.k[l] >= 1 && k.k[l] <= c.experts,
               "K = " << k.k[l] << " at layer " << l << " is outside [1, E=" << c.experts << "]");
  ANYK_CHECK(k.top_p >= 0 && k.top_p <= 1, "top-p " << k.top_p << " is outside (0, 1]");
}

void KVDecoder::forward(std::span<const Segment> segs, const InferenceK& k, std::vector<double>& logits,
                        bool all_logits) {
  const ModelConfig& c = lm_->config();
  ANYK_CHECK(!segs.empty(), "decoder forward needs at least one segment");
  check_k(k);
  std::vector<char> seen(size_t(slots_), 0);
  for (const Segment& s : segs) {
    if (s.k) check_k(*s.k);
    ANYK_CHECK(s.slot >= 0 && s.slot < slots_, "slot " << s.slot << " is outside [0, " << slots_ << ")");
    ANYK_CHECK(!seen[size_t(s.slot)], "slot " << s.slot << " appears twice in one pass");
    seen[size_t(s.slot)] = 1;
    ANYK_CHECK(s.n >= 1, "a segment needs at least one token");
    ANYK_CHECK(len_[size_t(s.slot)] + s.n <= cap_,
               "sequence " << s.slot << " would hold " << len_[size_t(s.slot)] + s.n << " tokens; the cache holds "
                           << cap_ << " (the model's context)");
    for (int i = 0; i < s.n; ++i)
      ANYK_CHECK(s.tokens[i] >= 0 && s.tokens[i] < c.vocab,
                 "token id " << s.tokens[i] << " is outside the vocab [0," << c.vocab << ")");
  }
  dispatch(lm_->params().dtype(), [&](auto tag) { forward_t<decltype(tag)>(segs, k, logits, all_logits); });
}

// One forward's sizes, kernel table and scratch: device buffers from the decoder's device arena,
// host ones (h_) from its host arena, both rewound per call.
template <class T> struct KVDecoder::Pass {
  const Kernels<T>* kn;
  const Ctx* ctx;
  Allocator* mem;  // the device's copy ops
  int C, NH, D, half, E, H, N, S;
  std::vector<int> r0;  // first row of each segment, and N
  T *x, *h, *rstd, *qkv, *qkr, *att, *a, *scores;
  T *rl, *probs, *lse, *wts, *rows_buf, *h13, *sw, *y;  // MoE scratch for the largest K
  double* top_scratch;                              // (E) for top_p_count_forward
  // idx (3N+S): token ids, the key and value rows of qkr viewed as (3N,C), each segment's last row
  int *idx, *ids, *kcount, *stok, *sslot;
  int *h_ids, *h_stok, *h_sslot, *h_counts, *h_next, *h_offsets;  // the expert sort, on the host
  int* h_kcount;    // (N) per-row K when the segments' K differ
  const int* h_tok;  // (N) the token ids on the host
  int Kmax;         // the largest K of any segment at any layer: the ids' row stride
  bool rows;        // row-invariant pass: every matmul on the few-row kernel
  const T* P(const ParamStore& ps, int id) const { return ps.value(id).template dev_ptr<T>(); }
};

template <class T>
KVDecoder::Pass<T> KVDecoder::make_pass(std::span<const Segment> segs, const InferenceK& kk) {
  const ModelConfig& c = lm_->config();
  Pass<T> p;
  p.kn = &kernels<T>(dev_);
  p.ctx = &exec_ctx(dev_);
  p.mem = &allocator(dev_);
  p.C = c.dim, p.NH = c.heads, p.D = p.C / p.NH, p.half = p.D / 2, p.E = c.experts, p.H = c.expert_hidden;
  p.S = int(segs.size());
  p.r0.assign(size_t(p.S) + 1, 0);
  for (int s = 0; s < p.S; ++s) p.r0[s + 1] = p.r0[s] + segs[s].n;
  const int N = p.N = p.r0[p.S], C = p.C, E = p.E, H = p.H, S = p.S;
  arena_.reset();
  host_.reset();
  auto buf = [&](int64_t n) { return arena_.alloc_n<T>(size_t(n)); };
  auto ibuf = [&](int64_t n) { return arena_.alloc_n<int>(size_t(n)); };
  auto hbuf = [&](int64_t n) { return host_.alloc_n<int>(size_t(n)); };
  int* hidx = hbuf(3 * int64_t(N) + S);  // uploaded once below
  for (int s = 0; s < S; ++s) std::memcpy(hidx + p.r0[s], segs[s].tokens, sizeof(int) * size_t(segs[s].n));
  for (int r = 0; r < N; ++r) hidx[N + r] = 3 * r + 1, hidx[2 * N + r] = 3 * r + 2;
  for (int s = 0; s < S; ++s) hidx[3 * N + s] = p.r0[s + 1] - 1;
  p.h_tok = hidx;
  p.idx = ibuf(3 * int64_t(N) + S);
  p.mem->from_host(p.idx, hidx, sizeof(int) * (3 * size_t(N) + size_t(S)));
  p.x = buf(int64_t(N) * C), p.h = buf(int64_t(N) * C), p.rstd = buf(N);
  p.qkv = buf(int64_t(N) * 3 * C), p.qkr = buf(int64_t(N) * 3 * C);
  p.att = buf(int64_t(N) * C), p.a = buf(int64_t(N) * C);
  int64_t score_n = 0;
  for (int s = 0; s < S; ++s)
    score_n = std::max<int64_t>(score_n, int64_t(p.NH) * segs[s].n * (len_[segs[s].slot] + segs[s].n));
  p.scores = buf(score_n);
  int Kmax = *std::max_element(kk.k.begin(), kk.k.end());
  for (const Segment& s : segs)
    if (s.k) Kmax = std::max(Kmax, *std::max_element(s.k->k.begin(), s.k->k.end()));
  p.Kmax = Kmax;
  p.rows = row_invariant_;
  const int64_t NK = int64_t(N) * Kmax;
  p.rl = buf(int64_t(N) * E), p.probs = buf(int64_t(N) * E), p.lse = buf(N);
  p.top_scratch = arena_.alloc_n<double>(size_t(E));
  p.ids = ibuf(NK), p.wts = buf(NK), p.kcount = ibuf(N);
  p.stok = ibuf(NK + 1), p.sslot = ibuf(NK + 1);
  p.h_ids = hbuf(NK), p.h_stok = hbuf(NK + 1), p.h_sslot = hbuf(NK + 1);
  p.h_counts = hbuf(E), p.h_next = hbuf(E), p.h_offsets = hbuf(int64_t(E) + 1), p.h_kcount = hbuf(N);
  p.rows_buf = buf(NK * C), p.h13 = buf(NK * 2 * H);
  p.sw = buf(NK * H), p.y = buf(NK * C);
  return p;
}

// Attention of layer l: norm, packed projection, RoPE at each segment's own positions, cache
// append (the key and value rows gathered into the cache), attention over the cache, output
// projection, residual.
template <class T> void KVDecoder::attention_t(Pass<T>& p, int l, std::span<const Segment> segs) {
  const ModelConfig& c = lm_->config();
  const ParamStore& ps = lm_->params();
  const LayerIds& li = layers_[l];
  const Kernels<T>& kn = *p.kn;
  const Ctx& ctx = *p.ctx;
  const int C = p.C, N = p.N, L = c.layers;
  const T* cosb = static_cast<const T*>(rope_.data());
  const T* sinb = cosb + int64_t(cap_) * p.half;
  T* kvbase = static_cast<T*>(kv_.data());
  auto cache = [&](int slot, int which) {  // (cap, C) keys (0) or values (1)
    return kvbase + ((int64_t(slot) * L + l) * 2 + which) * cap_ * C;
  };
  kn.rmsnorm_forward(ctx, p.h, p.rstd, p.x, p.P(ps, li.ln1), N, C, c.norm_eps);
  matmul<T>(kn, ctx, p.qkv, p.h, p.P(ps, li.wqkv), N, C, 3 * C, p.rows, w16(li.wqkv), &wide_);
  for (int s = 0; s < p.S; ++s) {
    const int p0 = len_[segs[s].slot], n = segs[s].n;
    const int64_t o = int64_t(p.r0[s]) * 3 * C;
    kn.rope_forward(ctx, p.qkr + o, p.qkv + o, cosb + int64_t(p0) * p.half, sinb + int64_t(p0) * p.half, 1, n,
                    3 * p.NH, p.D, 2 * p.NH);
    T* kc = cache(segs[s].slot, 0);
    T* vc = cache(segs[s].slot, 1);
    kn.gather_rows_forward(ctx, kc + int64_t(p0) * C, p.qkr, p.idx + N + p.r0[s], n, C);
    kn.gather_rows_forward(ctx, vc + int64_t(p0) * C, p.qkr, p.idx + 2 * N + p.r0[s], n, C);
    kn.attention_cached_forward(ctx, p.att + int64_t(p.r0[s]) * C, p.scores, p.qkr + o, 3 * C, kc, vc, n,
                                p0 + n, C, p.NH);
  }
  matmul<T>(kn, ctx, p.a, p.att, p.P(ps, li.wo), N, C, C, p.rows, w16(li.wo), &wide_);
  kn.add_forward(ctx, p.x, p.x, p.a, int64_t(N) * C);
}

// Router of layer l: probabilities and each row's experts, into p.ids (N, Kmax; -1 past a row's
// K). One K for every segment: the forced K (or top-p K under it) as before. Segments at different
// K: each row's K count (its segment's K, or its top-p count capped by that K) goes to the router,
// which then chooses exactly what it chooses for that row alone (the row code takes the top kt
// by the same arg-max). The ids come to the host and are sorted by expert; returns the routed rows.
template <class T> int KVDecoder::route_t(Pass<T>& p, int l, std::span<const Segment> segs, const InferenceK& kk) {
  const Kernels<T>& kn = *p.kn;
  const Ctx& ctx = *p.ctx;
  const int N = p.N, E = p.E;
  const bool renorm = lm_->config().router.renormalize;
  bool uniform = true;  // every segment at the forward's K and top-p on this layer
  for (const Segment& s : segs)
    if (s.k && (s.k->k[l] != kk.k[l] || s.k->top_p != kk.top_p)) uniform = false;
  const int K = uniform ? kk.k[l] : p.Kmax;  // the ids' row stride
  if (uniform) {
    kn.router_forward(ctx, p.probs, p.lse, p.ids, p.wts, p.rl, nullptr, N, E, K, renorm);
    if (kk.top_p > 0) {
      kn.top_p_count_forward(ctx, p.kcount, p.top_scratch, p.probs, N, E, kk.top_p, 1, K);
      kn.router_forward(ctx, p.probs, p.lse, p.ids, p.wts, p.rl, p.kcount, N, E, K, renorm);
    }
  } else {
    kn.router_forward(ctx, p.probs, p.lse, p.ids, p.wts, p.rl, nullptr, N, E, K, renorm);  // the probabilities
    for (int s = 0; s < p.S; ++s) {
      const InferenceK& sk = segs[s].k ? *segs[s].k : kk;
      for (int r = p.r0[s]; r < p.r0[s + 1]; ++r) p.h_kcount[r] = sk.k[l];
    }
    p.mem->from_host(p.kcount, p.h_kcount, sizeof(int) * size_t(N));
    for (int s = 0; s < p.S; ++s) {
      const InferenceK& sk = segs[s].k ? *segs[s].k : kk;
      const int r0 = p.r0[s], n = p.r0[s + 1] - r0;
      if (sk.top_p > 0)
        kn.top_p_count_forward(ctx, p.kcount + r0, p.top_scratch, p.probs + int64_t(r0) * E, n, E, sk.top_p, 1,
                               sk.k[l]);
    }
    kn.router_forward(ctx, p.probs, p.lse, p.ids, p.wts, p.rl, p.kcount, N, E, K, renorm);
  }
  p.mem->to_host(p.h_ids, p.ids, sizeof(int) * size_t(N) * K);
  for (int s = 0; s < p.S; ++s) {
    if (!segs[s].routed) continue;
    int64_t n = 0;
    for (int64_t i = int64_t(p.r0[s]) * K; i < int64_t(p.r0[s + 1]) * K; ++i) n += p.h_ids[i] >= 0;
    segs[s].routed[l] += n;
  }
  return sort_assignments(p.h_ids, N, K, E, p.h_stok, p.h_sslot, p.h_counts, p.h_next);
}

// MoE of layer l: norm, router (route_t), sort by expert, SwiGLU experts on their contiguous rows,
// weighted scatter back, residual. The chosen ids come to the host for the sort (as the training
// dispatcher plans on the host); its rows go back up.
template <class T> void KVDecoder::moe_t(Pass<T>& p, int l, std::span<const Segment> segs, const InferenceK& kk) {
  const ModelConfig& c = lm_->config();
  const ParamStore& ps = lm_->params();
  const LayerIds& li = layers_[l];
  const Kernels<T>& kn = *p.kn;
  const Ctx& ctx = *p.ctx;
  const int C = p.C, N = p.N, E = p.E, H = p.H;
  kn.rmsnorm_forward(ctx, p.h, p.rstd, p.x, p.P(ps, li.ln2), N, C, c.norm_eps);
  matmul<T>(kn, ctx, p.rl, p.h, p.P(ps, li.router), N, C, E, p.rows);
  const int sent = route_t<T>(p, l, segs, kk);
  p.h_offsets[0] = 0;
  for (int e = 0; e < E; ++e) p.h_offsets[e + 1] = p.h_offsets[e] + p.h_counts[e];
  if (sent > 0) {
    p.mem->from_host(p.stok, p.h_stok, sizeof(int) * size_t(sent));
    p.mem->from_host(p.sslot, p.h_sslot, sizeof(int) * size_t(sent));
  }
  kn.gather_rows_forward(ctx, p.rows_buf, p.h, p.stok, sent, C);
  grouped<T>(kn, ctx, p.h13, p.rows_buf, p.P(ps, li.w13), p.h_offsets, E, C, 2 * H, p.rows, w16(li.w13), &wide_);
  kn.swiglu_forward(ctx, p.sw, p.h13, sent, H);
  grouped<T>(kn, ctx, p.y, p.sw, p.P(ps, li.w2), p.h_offsets, E, H, C, p.rows, w16(li.w2), &wide_);
  kn.fill(ctx, p.a, T(0), int64_t(N) * C);
  kn.scatter_add_rows_forward(ctx, p.a, p.y, p.wts, p.stok, p.sslot, sent, C);
  kn.add_forward(ctx, p.x, p.x, p.a, int64_t(N) * C);
  assignments_ += sent;
  token_layers_ += N;
  for (int e = 0; e < E; ++e) experts_read_ += p.h_counts[e] > 0;
}

// Final norm and tied head on the rows that need logits; the logits come to the host once.
template <class T> void KVDecoder::head_t(Pass<T>& p, std::vector<double>& logits, bool all_logits) {
  const ModelConfig& c = lm_->config();
  const ParamStore& ps = lm_->params();
  const int C = p.C, N = p.N, V = c.vocab;
  const int R = all_logits ? N : p.S;
  const T* xs = p.x;
  if (!all_logits) {  // each segment's last row
    p.kn->gather_rows_forward(*p.ctx, p.h, p.x, p.idx + 3 * N, p.S, C);
    xs = p.h;
  }
  T* xn = p.a;
  p.kn->rmsnorm_forward(*p.ctx, xn, p.rstd, xs, p.P(ps, lnf_), R, C, c.norm_eps);
  T* lg = arena_.alloc_n<T>(size_t(R) * V);
  matmul<T>(*p.kn, *p.ctx, lg, xn, p.P(ps, wte_), R, C, V, p.rows, w16(wte_), &wide_);
  T* hl = static_cast<T*>(host_.alloc(sizeof(T) * size_t(R) * V));
  p.mem->to_host(hl, lg, sizeof(T) * size_t(R) * V);
  logits.assign(hl, hl + int64_t(R) * V);
}

// The embedding rows of the pass's tokens: the f32 table, or its bf16 copy widened (the tied head's
// weights, so that bf16 mode is an f32 model over rounded weights throughout).
template <class T> void KVDecoder::embed_t(Pass<T>& p) {
  if constexpr (std::is_same_v<T, float>) {
    if (const uint16_t* e = w16(wte_)) {
      for (int r = 0; r < p.N; ++r) cpu::from_bf16(p.x + int64_t(r) * p.C, e + int64_t(p.h_tok[r]) * p.C, p.C);
      return;
    }
  }
  p.kn->embedding_forward(*p.ctx, p.x, p.idx, p.P(lm_->params(), wte_), p.N, p.C);
}

template <class T>
void KVDecoder::forward_t(std::span<const Segment> segs, const InferenceK& kk, std::vector<double>& logits,
                          bool all_logits) {
  Pass<T> p = make_pass<T>(segs, kk);
  embed_t<T>(p);
  for (int l = 0; l < lm_->config().layers; ++l) {
    cpu::governor_tick();  // the thread count for this layer (kernels/cpu/thread_governor.h)
    attention_t<T>(p, l, segs);
    moe_t<T>(p, l, segs, kk);
  }
  head_t<T>(p, logits, all_logits);
  for (const Segment& s : segs) len_[size_t(s.slot)] += s.n;
}

namespace {

// Nucleus: of the n candidates (in id order), the most likely ones (ties: lower id first) whose
// probability at the temperature first reaches top_p, back in id order; returns how many.
int nucleus(const double* logits, const SampleOptions& o, std::vector<int>& cand, int n) {
  std::vector<int> by(cand.begin(), cand.begin() + n);
  std::sort(by.begin(), by.end(), [&](int p, int q) { return logits[p] > logits[q] || (logits[p] == logits[q] && p < q); });
  const double mx = logits[by[0]];
  double total = 0;
  for (int v : by) total += std::exp((logits[v] - mx) / o.temperature);
  double acc = 0;
  int keep = 0;
  while (keep < n) {
    acc += std::exp((logits[by[size_t(keep)]] - mx) / o.temperature);
    ++keep;
    if (acc >= o.top_p * total) break;
  }
  std::sort(by.begin(), by.begin() + keep);
  std::copy(by.begin(), by.begin() + keep, cand.begin());
  return keep;
}

}  // namespace

int sample_token(const double* logits, int V, const SampleOptions& o, double u) {
  ANYK_CHECK(V >= 1, "sampling needs at least one logit");
  int best = 0;
  for (int v = 1; v < V; ++v)
    if (logits[v] > logits[best]) best = v;
  if (o.temperature <= 0) return best;
  // Candidates: every token, or the top_k largest logits (ties: lower id first).
  std::vector<int> cand(static_cast<size_t>(V));
  for (int v = 0; v < V; ++v) cand[size_t(v)] = v;
  int n = V;
  if (o.top_k > 0 && o.top_k < V) {
    n = o.top_k;
    std::partial_sort(cand.begin(), cand.begin() + n, cand.end(), [&](int p, int q) {
      return logits[p] > logits[q] || (logits[p] == logits[q] && p < q);
    });
    std::sort(cand.begin(), cand.begin() + n);  // id order, so the draw does not depend on the sort
  }
  if (o.top_p < 1) n = nucleus(logits, o, cand, n);
  std::vector<double> w(static_cast<size_t>(n));
  double mx = logits[best], sum = 0;
  for (int i = 0; i < n; ++i) {
    w[size_t(i)] = std::exp((logits[cand[size_t(i)]] - mx) / o.temperature);
    sum += w[size_t(i)];
  }
  double target = u * sum, acc = 0;
  for (int i = 0; i < n; ++i) {
    acc += w[size_t(i)];
    if (target < acc) return cand[size_t(i)];
  }
  return cand[size_t(n - 1)];
}

double sample_uniform(uint64_t seed, int64_t step) {
  return uniform01(hash_key(seed, 0x67656e6572617465ULL /* "generate" */, uint64_t(step)));
}

int window_keep(int W) { return std::max(1, W / 2); }

static double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

std::vector<std::vector<int>> generate(const LM& lm, const std::vector<std::vector<int>>& prompts,
                                       const GenerateOptions& o, const std::function<void(int, int)>& on_token,
                                       GenerateStats* stats) {
  const ModelConfig& c = lm.config();
  const int W = o.window > 0 ? o.window : c.seq_len;
  const int B = int(prompts.size());
  ANYK_CHECK(B >= 1, "generation needs at least one prompt");
  ANYK_CHECK(o.max_new >= 0, "--max-new " << o.max_new << " must be >= 0");
  ANYK_CHECK(W <= c.seq_len, "window " << W << " exceeds the model's context (seq_len " << c.seq_len << ")");
  for (int i = 0; i < B; ++i) {
    ANYK_CHECK(!prompts[i].empty(), "prompt " << i + 1 << " is empty hint: give at least one character");
    ANYK_CHECK(int(prompts[i].size()) <= W,
               "prompt " << i + 1 << " is " << prompts[i].size() << " tokens; the model's context is " << W
                         << " tokens (seq_len) hint: shorten it (generation itself continues past the context "
                            "by re-reading the last "
                         << window_keep(W) << " tokens)");
  }
  using clock = std::chrono::steady_clock;
  // The caches hold W positions only when this call can reach W: otherwise the longest prompt
  // plus max_new is enough (a model file's seq_len alone never sizes the allocation).
  int64_t need = 0;
  for (const auto& p : prompts) need = std::max<int64_t>(need, int64_t(p.size()) + o.max_new);
  KVDecoder dec(lm, B, int(std::min<int64_t>(W, need)), o.weights);
  std::vector<std::vector<int>> hist(static_cast<size_t>(B));
  std::vector<std::vector<int>> out(static_cast<size_t>(B));
  GenerateStats st;
  std::vector<Segment> segs(static_cast<size_t>(B));
  for (int i = 0; i < B; ++i) {
    hist[i] = prompts[i];
    hist[i].reserve(prompts[i].size() + size_t(o.max_new));
    out[i].reserve(size_t(o.max_new));
    segs[i] = Segment{i, hist[i].data(), int(hist[i].size())};
    st.prompt_tokens += int64_t(hist[i].size());
  }
  std::vector<double> logits;
  const int V = c.vocab;
  auto t0 = clock::now();
  if (o.max_new > 0) dec.forward(segs, o.k, logits);
  auto t1 = clock::now();
  const double cpu1 = process_cpu_seconds();
  const int64_t prompt_experts = dec.experts_read();
  for (int step = 0; step < o.max_new; ++step) {
    const double u = sample_uniform(o.sample.seed, step);
    for (int i = 0; i < B; ++i) {
      int t = sample_token(logits.data() + int64_t(i) * V, V, o.sample, u);
      hist[i].push_back(t);
      out[i].push_back(t);
      if (on_token) on_token(i, t);
    }
    st.generated += B;
    if (step + 1 == o.max_new) break;
    for (int i = 0; i < B; ++i) {
      if (dec.length(i) + 1 > W) {  // slide: re-read the last window_keep(W) tokens
        dec.reset(i);
        const int keep = window_keep(W);
        segs[i] = Segment{i, hist[i].data() + hist[i].size() - size_t(keep), keep};
        ++st.slides;
      } else {
        segs[i] = Segment{i, hist[i].data() + hist[i].size() - 1, 1};
      }
    }
    dec.forward(segs, o.k, logits);
    st.decoded += B;
  }
  auto t2 = clock::now();
  st.decode_cpu_seconds = process_cpu_seconds() - cpu1;
  st.prompt_seconds = std::chrono::duration<double>(t1 - t0).count();
  st.decode_seconds = std::chrono::duration<double>(t2 - t1).count();
  st.mean_k = dec.token_layers() ? double(dec.assignments()) / double(dec.token_layers()) : 0;
  const int64_t steps = st.decoded / B;  // decode passes (slides included)
  st.decode_experts = steps ? double(dec.experts_read() - prompt_experts) / double(steps * c.layers) : 0;
  if (stats) *stats = st;
  return out;
}

}  // namespace anyk
