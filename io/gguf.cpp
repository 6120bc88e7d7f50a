// The GGUF writer and the llama-architecture export; see gguf.h.
#include "io/gguf.h"

#include <cmath>
#include <cstring>
#include <memory>

#include "core/check.h"
#include "data/sp_tokenizer.h"
#include "io/fsio.h"

namespace anyk::io {

namespace {

enum : uint32_t { kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9 };  // GGUF value types

template <class T> void put(std::string& s, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian host (x86-64, aarch64)
  s.append(b, sizeof(T));
}
void put_string(std::string& s, const std::string& v) {
  put<uint64_t>(s, v.size());
  s += v;
}

}  // namespace

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));  // inf, nan
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {  // below 2^-14: a half subnormal, m * 2^-24 (m = 1024 is the smallest normal)
    float a;
    std::memcpy(&a, &ax, 4);
    return uint16_t(sign | uint32_t(std::nearbyint(a * 16777216.0f)));  // exact scaling, ties to even
  }
  const uint32_t e = ax - 0x38000000u;  // exponent rebiased 127 -> 15
  return uint16_t(sign | ((e + 0xfffu + ((e >> 13) & 1u)) >> 13));
}

std::string gpt2_byte_piece(int b) {
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  int cp = b;
  if (!printable) {
    int n = 0;  // the rank of b among the non-printable bytes
    for (int i = 0; i < b; ++i)
      if (!((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else {  // every code point here is below 0x800: two UTF-8 bytes
    s += char(0xc0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3f));
  }
  return s;
}

void GGUFWriter::add_u32(const std::string& key, uint32_t v) {
  put_string(kv_, key), put<uint32_t>(kv_, kU32), put<uint32_t>(kv_, v), ++n_kv_;
}
void GGUFWriter::add_f32(const std::string& key, float v) {
  put_string(kv_, key), put<uint32_t>(kv_, kF32), put<float>(kv_, v), ++n_kv_;
}
void GGUFWriter::add_bool(const std::string& key, bool v) {
  put_string(kv_, key), put<uint32_t>(kv_, kBool), put<uint8_t>(kv_, v ? 1 : 0), ++n_kv_;
}
void GGUFWriter::add_string(const std::string& key, const std::string& v) {
  put_string(kv_, key), put<uint32_t>(kv_, kString), put_string(kv_, v), ++n_kv_;
}
void GGUFWriter::add_strings(const std::string& key, const std::vector<std::string>& v) {
  put_string(kv_, key), put<uint32_t>(kv_, kArray), put<uint32_t>(kv_, kString), put<uint64_t>(kv_, v.size());
  for (const std::string& s : v) put_string(kv_, s);
  ++n_kv_;
}
void GGUFWriter::add_i32s(const std::string& key, const std::vector<int32_t>& v) {
  put_string(kv_, key), put<uint32_t>(kv_, kArray), put<uint32_t>(kv_, kI32), put<uint64_t>(kv_, v.size());
  for (int32_t x : v) put<int32_t>(kv_, x);
  ++n_kv_;
}

void GGUFWriter::add_f32s(const std::string& key, const std::vector<float>& v) {
  put_string(kv_, key), put<uint32_t>(kv_, kArray), put<uint32_t>(kv_, kF32), put<uint64_t>(kv_, v.size());
  for (float x : v) put<float>(kv_, x);
  ++n_kv_;
}

void GGUFWriter::add_tensor(const std::string& name, std::vector<int64_t> ne, std::vector<float> values, Type type) {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  ANYK_CHECK(n == int64_t(values.size()), "GGUF tensor " << name << ": " << values.size() << " values for " << n);
  tensors_.push_back({name, std::move(ne), std::move(values), type});
}

void GGUFWriter::write(const std::string& path) const {
  std::string head = "GGUF";
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, n_kv_);
  head += kv_;
  auto padded = [](uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; };
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(head, uint64_t(d));
    put<uint32_t>(head, uint32_t(t.type));
    put<uint64_t>(head, offset);
    offset = padded(offset + t.values.size() * (t.type == Type::F32 ? 4 : 2));
  }
  head.resize(padded(head.size()), '\0');
  write_file_atomic(path, [&](const std::string& tmp) {
    FileWriter w(tmp);
    w.write(head.data(), head.size());
    std::string data;
    for (const Tensor& t : tensors_) {
      data.clear();
      if (t.type == Type::F32) {
        data.assign(reinterpret_cast<const char*>(t.values.data()), t.values.size() * 4);
      } else {
        for (float v : t.values) put<uint16_t>(data, f32_to_f16(v));
      }
      data.resize(padded(data.size()), '\0');
      w.write(data.data(), data.size());
    }
    w.close();
  });
}

namespace {

// Rows [r0, r0 + n) of a row-major (rows, cols) matrix.
std::vector<float> rows(const float* w, int64_t r0, int64_t n, int64_t cols) {
  return std::vector<float>(w + r0 * cols, w + (r0 + n) * cols);
}

// Q or K (C, C): within each head, row j * D/2 + i (anyk: pairs (i, i + D/2)) moves to 2i + j
// (llama.cpp's NORM RoPE: pairs (2i, 2i + 1)), as llama.cpp's HF converter permutes Llama/Mixtral.
std::vector<float> rope_permuted(const float* w, int C, int NH) {
  const int D = C / NH, half = D / 2;
  std::vector<float> out(size_t(C) * C);
  for (int h = 0; h < NH; ++h)
    for (int i = 0; i < half; ++i)
      for (int j = 0; j < 2; ++j) {
        const float* src = w + (int64_t(h) * D + j * half + i) * C;
        std::copy(src, src + C, out.begin() + (int64_t(h) * D + 2 * i + j) * C);
      }
  return out;
}

// Rows [r0, r0 + n) of every expert of a (E, R, cols) tensor, as (E, n, cols).
std::vector<float> expert_rows(const float* w, int E, int64_t R, int64_t r0, int64_t n, int64_t cols) {
  std::vector<float> out;
  out.reserve(size_t(E * n * cols));
  for (int e = 0; e < E; ++e) {
    const float* base = w + (int64_t(e) * R + r0) * cols;
    out.insert(out.end(), base, base + n * cols);
  }
  return out;
}

void add_hparams(GGUFWriter& g, const ModelConfig& c, const GGUFExport& opt) {
  g.add_string("general.architecture", "llama");
  g.add_string("general.name", opt.name.empty() ? "anyk" : opt.name);
  g.add_u32("general.file_type", opt.f16 ? 1 : 0);  // LLAMA_FTYPE_ALL_F32 / MOSTLY_F16
  g.add_u32("general.alignment", GGUFWriter::kAlignment);
  g.add_u32("llama.vocab_size", uint32_t(c.vocab));
  g.add_u32("llama.context_length", uint32_t(c.seq_len));
  g.add_u32("llama.embedding_length", uint32_t(c.dim));
  g.add_u32("llama.block_count", uint32_t(c.layers));
  g.add_u32("llama.feed_forward_length", uint32_t(c.expert_hidden));
  g.add_u32("llama.attention.head_count", uint32_t(c.heads));
  g.add_u32("llama.attention.head_count_kv", uint32_t(c.heads));
  g.add_u32("llama.rope.dimension_count", uint32_t(c.dim / c.heads));
  g.add_f32("llama.rope.freq_base", float(c.rope_theta));
  g.add_f32("llama.attention.layer_norm_rms_epsilon", float(c.norm_eps));
  g.add_u32("llama.expert_count", uint32_t(c.experts));
  g.add_u32("llama.expert_used_count", uint32_t(opt.k));
}

// The byte vocabulary: 256 GPT-2 byte pieces, all normal tokens, no merges, no BOS added.
// bos/eos name byte 0 (NUL), which text does not hold: llama.cpp's tools stop generating there.
// Pre-tokenizer "qwen2" (a byte-level BPE's): without merges its word split changes no id, and
// unlike "default" it does not make llama.cpp's detokenizer drop the space before ?!., .
void add_byte_tokenizer(GGUFWriter& g) {
  std::vector<std::string> pieces;
  for (int b = 0; b < 256; ++b) pieces.push_back(gpt2_byte_piece(b));
  g.add_string("tokenizer.ggml.model", "gpt2");
  g.add_string("tokenizer.ggml.pre", "qwen2");
  g.add_strings("tokenizer.ggml.tokens", pieces);
  g.add_i32s("tokenizer.ggml.token_type", std::vector<int32_t>(256, 1));  // LLAMA_TOKEN_TYPE_NORMAL
  g.add_strings("tokenizer.ggml.merges", {});
  g.add_u32("tokenizer.ggml.bos_token_id", 0);
  g.add_u32("tokenizer.ggml.eos_token_id", 0);
  g.add_bool("tokenizer.ggml.add_bos_token", false);
  g.add_bool("tokenizer.ggml.add_eos_token", false);
}

// A SentencePiece model as llama.cpp's "llama" (SPM) tokenizer: its pieces, scores and token
// types (byte pieces <0xNN> are llama.cpp's byte fallback). anyk adds no BOS/EOS, so neither does
// llama.cpp; the leading space (SentencePiece's dummy prefix) is added where the model adds it
// (train_sp's models do not).
void add_sp_tokenizer(GGUFWriter& g, const data::SpTokenizer& sp) {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (int i = 0; i < sp.vocab(); ++i) {
    pieces.push_back(sp.piece(i));
    scores.push_back(sp.score(i));
    types.push_back(sp.token_type(i));
  }
  g.add_string("tokenizer.ggml.model", "llama");
  g.add_string("tokenizer.ggml.pre", "default");
  g.add_strings("tokenizer.ggml.tokens", pieces);
  g.add_f32s("tokenizer.ggml.scores", scores);
  g.add_i32s("tokenizer.ggml.token_type", types);
  if (sp.unk_id() >= 0) g.add_u32("tokenizer.ggml.unknown_token_id", uint32_t(sp.unk_id()));
  if (sp.bos_id() >= 0) g.add_u32("tokenizer.ggml.bos_token_id", uint32_t(sp.bos_id()));
  if (sp.eos_id() >= 0) g.add_u32("tokenizer.ggml.eos_token_id", uint32_t(sp.eos_id()));
  g.add_bool("tokenizer.ggml.add_bos_token", false);
  g.add_bool("tokenizer.ggml.add_eos_token", false);
  g.add_bool("tokenizer.ggml.add_space_prefix", sp.adds_dummy_prefix());
}

void add_layer(GGUFWriter& g, const ModelConfig& c, const std::function<const float*(const std::string&)>& param,
               int l, GGUFWriter::Type mat) {
  using T = GGUFWriter::Type;
  const int C = c.dim, E = c.experts, H = c.expert_hidden;
  const std::string p = "layers." + std::to_string(l), b = "blk." + std::to_string(l);
  const float* ln1 = param(p + ".ln1");
  const float* ln2 = param(p + ".ln2");
  const float* qkv = param(p + ".attn.wqkv");
  const float* w13 = param(p + ".moe.experts.w13");
  const float* w2 = param(p + ".moe.experts.w2");
  const float* router = param(p + ".moe.router");
  const float* wo = param(p + ".attn.wo");
  g.add_tensor(b + ".attn_norm.weight", {C}, std::vector<float>(ln1, ln1 + C), T::F32);
  g.add_tensor(b + ".attn_q.weight", {C, C}, rope_permuted(qkv, C, c.heads), mat);
  g.add_tensor(b + ".attn_k.weight", {C, C}, rope_permuted(qkv + int64_t(C) * C, C, c.heads), mat);
  g.add_tensor(b + ".attn_v.weight", {C, C}, rows(qkv, 2 * C, C, C), mat);
  g.add_tensor(b + ".attn_output.weight", {C, C}, rows(wo, 0, C, C), mat);
  g.add_tensor(b + ".ffn_norm.weight", {C}, std::vector<float>(ln2, ln2 + C), T::F32);
  g.add_tensor(b + ".ffn_gate_inp.weight", {C, E}, rows(router, 0, E, C), T::F32);
  g.add_tensor(b + ".ffn_gate_exps.weight", {C, H, E}, expert_rows(w13, E, 2 * H, 0, H, C), mat);
  g.add_tensor(b + ".ffn_up_exps.weight", {C, H, E}, expert_rows(w13, E, 2 * H, H, H, C), mat);
  g.add_tensor(b + ".ffn_down_exps.weight", {H, C, E}, expert_rows(w2, E, C, 0, C, H), mat);
}

}  // namespace

void write_llama_gguf(const ModelConfig& c, const std::function<const float*(const std::string&)>& param,
                      const GGUFExport& opt, const std::string& path) {
  std::unique_ptr<data::SpTokenizer> sp;
  if (!opt.tokenizer.empty()) sp = std::make_unique<data::SpTokenizer>(opt.tokenizer);
  ANYK_CHECK(sp || c.vocab == 256, "--to gguf: the model's vocab is " << c.vocab << " but it has no SentencePiece "
                                   "tokenizer.model; without one the export carries the byte vocabulary (256 tokens)");
  ANYK_CHECK(!sp || sp->vocab() == c.vocab, "--to gguf: the model's vocab is " << c.vocab << " but its tokenizer "
                                                << opt.tokenizer << " has " << (sp ? sp->vocab() : 0) << " pieces");
  ANYK_CHECK(c.router.renormalize, "--to gguf: the model was trained without renormalised gates "
                                   "(router_renormalize 0); llama.cpp's llama MoE always renormalises them");
  ANYK_CHECK((c.dim / c.heads) % 2 == 0, "--to gguf: head dim " << c.dim / c.heads << " is odd; RoPE needs it even");
  ANYK_CHECK(opt.k >= 1 && opt.k <= c.experts, "--k " << opt.k << " is outside [1, experts=" << c.experts << "]");
  GGUFWriter g;
  add_hparams(g, c, opt);
  if (sp) add_sp_tokenizer(g, *sp);
  else add_byte_tokenizer(g);
  const auto mat = opt.f16 ? GGUFWriter::Type::F16 : GGUFWriter::Type::F32;
  const float* wte = param("wte");
  const float* lnf = param("lnf");
  g.add_tensor("token_embd.weight", {c.dim, c.vocab}, rows(wte, 0, c.vocab, c.dim), mat);
  g.add_tensor("output_norm.weight", {c.dim}, std::vector<float>(lnf, lnf + c.dim), GGUFWriter::Type::F32);
  for (int l = 0; l < c.layers; ++l) add_layer(g, c, param, l, mat);
  g.write(path);
}

}  // namespace anyk::io
