// SentencePiece tokenizer (Debian's libsentencepiece): `anyk prepare --tokenizer sp` trains one on
// the training split, `--tokenizer FILE.model` takes a given one. The model file travels as
// DATA_DIR/tokenizer.model (and RUN_DIR/tokenizer.model); runs, checkpoints and weights name it by
// its hash (config.ini keys tokenizer and tokenizer-hash), and every consumer compares hashes.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace anyk::data {

inline constexpr const char* kTokenizerFile = "tokenizer.model";
/// The tokenizer-hash of byte data (no tokenizer.model).
inline constexpr const char* kBytesTokenizer = "bytes";

/// "fnv1a64:<16 hex digits>" of a file's bytes; one-line error if it cannot be read.
std::string tokenizer_hash(const std::string& path);

/// DIR/tokenizer.model's hash, or "bytes" when DIR holds none.
std::string dir_tokenizer_hash(const std::string& dir);

class SpTokenizer {
 public:
  /// Loads a SentencePiece model file; refuses one with more than 65535 pieces (uint16 shards).
  explicit SpTokenizer(const std::string& model_path);
  ~SpTokenizer();
  int vocab() const;
  std::vector<int> encode(std::string_view text) const;
  /// SentencePiece's own decoder.
  std::string decode(const std::vector<int>& ids) const;
  /// The bytes one id stands for, as llama.cpp prints it: "▁" -> " ", <0xNN> -> the byte,
  /// control and unknown ids -> "". Concatenated over ids this is decode() for models trained by
  /// train_sp (no dummy prefix, identity normalisation).
  std::string token_text(int id) const;
  const std::string& piece(int id) const;
  float score(int id) const;
  /// llama.cpp's token type: 1 normal, 2 unknown, 3 control, 5 unused, 6 byte.
  int32_t token_type(int id) const;
  /// Whether encoding prepends a space (SentencePiece's add_dummy_prefix; train_sp's models: no).
  bool adds_dummy_prefix() const;
  int unk_id() const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;
  const std::string& path() const { return path_; }
  const std::string& hash() const { return hash_; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_, hash_;
};

/// Trains a BPE SentencePiece model of vocab pieces on text's lines (identity normalisation, no
/// dummy prefix, whitespace kept, byte fallback: any byte string round-trips, and llama.cpp's
/// "llama" tokenizer gives the same ids) and writes it to out_path.
void train_sp(const std::string& text, int vocab, const std::string& out_path);

/// `anyk prepare`'s tokenizer step: "bytes" (or empty) byte-encodes; "sp" trains a model of
/// vocab pieces on the first train_fraction of text; anything else is a .model file. A
/// SentencePiece model is written to out_dir/tokenizer.model before the text is encoded.
std::vector<uint16_t> encode_for_prepare(const std::string& text, const std::string& tokenizer, int vocab,
                                         double train_fraction, const std::string& out_dir,
                                         std::string* summary);

}  // namespace anyk::data
