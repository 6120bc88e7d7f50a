// GGUF (version 3), the file format of llama.cpp: a small writer, and the export of an anyk model
// as a llama.cpp "llama"-architecture Mixture-of-Experts (the Mixtral layout) with the byte
// vocabulary. Layout of a GGUF file (all little-endian):
//   "GGUF", u32 version = 3, u64 tensor count, u64 key-value count,
//   key-value pairs: string key, u32 value type, value (strings are u64 length + bytes, arrays are
//     u32 element type + u64 count + elements),
//   tensor infos: string name, u32 n_dims, u64 dims[n_dims] innermost (contiguous) first,
//     u32 ggml type, u64 offset of the data from the start of the data section,
//   zero padding to general.alignment (32), then each tensor's data, each padded to 32 bytes.
// docs/elsewhere.md describes the mapping and how llama.cpp runs the file.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"

namespace anyk::io {

class GGUFWriter {
 public:
  enum class Type : uint32_t { F32 = 0, F16 = 1 };  // ggml tensor types written here

  void add_u32(const std::string& key, uint32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_strings(const std::string& key, const std::vector<std::string>& v);
  void add_i32s(const std::string& key, const std::vector<int32_t>& v);
  void add_f32s(const std::string& key, const std::vector<float>& v);
  // A tensor of ggml dims `ne` (innermost first) from row-major float32 `values`
  // (numel = product of ne), stored as `type`.
  void add_tensor(const std::string& name, std::vector<int64_t> ne, std::vector<float> values, Type type);
  // The whole file, written atomically (path.tmp, then renamed).
  void write(const std::string& path) const;

  static constexpr uint32_t kAlignment = 32;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> ne;
    std::vector<float> values;
    Type type;
  };
  std::string kv_;  // the encoded key-value pairs
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

// float32 -> IEEE half, round to nearest even (ggml's F16).
uint16_t f32_to_f16(float f);

// The GPT-2 byte-level piece of byte b (bytes_to_unicode): printable bytes stand for themselves,
// the others for code points 256 + n. llama.cpp's "gpt2" tokenizer with these 256 pieces and no
// merges maps every byte of a text to its own id, as anyk's byte vocabulary does.
std::string gpt2_byte_piece(int b);

struct GGUFExport {
  int k = 0;           // expert_used_count (1..E)
  bool f16 = false;    // matrices in F16 (norms and the router stay F32)
  std::string name;    // general.name
  std::string tokenizer;  // the model's SentencePiece tokenizer.model; empty: the byte vocabulary
};

// Writes the model as a llama.cpp "llama" MoE. `param(name)` returns a parameter's values
// (row-major, full shape: experts as (E, ...)). Q and K rows are permuted per head from anyk's
// rotate-half RoPE pairing (i, i + D/2) to llama.cpp's adjacent pairs (2i, 2i + 1); the LM head
// is tied, so no output.weight is written (llama.cpp then uses token_embd). The vocabulary is
// the 256 bytes, or opt.tokenizer's SentencePiece pieces, scores and types as llama.cpp's "llama"
// (SPM) tokenizer, no BOS or space prefix added (anyk adds neither). Refuses, in one line, a model
// it cannot express: a vocab that is not its tokenizer's size, gates not renormalised.
void write_llama_gguf(const ModelConfig& c, const std::function<const float*(const std::string&)>& param,
                      const GGUFExport& opt, const std::string& path);

}  // namespace anyk::io
