// SentencePiece model loading, training and the prepare step; see data/sp_tokenizer.h.
#include "data/sp_tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <unordered_map>

#include "core/check.h"
#include "data/tokenizer.h"

namespace anyk::data {

namespace fs = std::filesystem;

std::string tokenizer_hash(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ANYK_CHECK(in, "cannot read tokenizer " << path);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  char buf[40];
  std::snprintf(buf, sizeof buf, "fnv1a64:%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string dir_tokenizer_hash(const std::string& dir) {
  const fs::path p = fs::path(dir) / kTokenizerFile;
  return fs::is_regular_file(p) ? tokenizer_hash(p.string()) : kBytesTokenizer;
}

SpTokenizer::SpTokenizer(const std::string& model_path)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()), path_(model_path) {
  ANYK_CHECK(fs::is_regular_file(model_path), "tokenizer " << model_path << " does not exist");
  const auto st = sp_->Load(model_path);
  ANYK_CHECK(st.ok(), "tokenizer " << model_path << " is not a SentencePiece model: " << st.ToString());
  ANYK_CHECK(sp_->GetPieceSize() <= 65535, "tokenizer " << model_path << " has " << sp_->GetPieceSize()
                                                        << " pieces; anyk's uint16 shards hold at most 65535");
  hash_ = tokenizer_hash(model_path);
}

SpTokenizer::~SpTokenizer() = default;

int SpTokenizer::vocab() const { return sp_->GetPieceSize(); }

std::vector<int> SpTokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto st = sp_->Encode(std::string(text), &ids);
  ANYK_CHECK(st.ok(), "tokenizer " << path_ << ": encoding failed: " << st.ToString());
  return ids;
}

std::string SpTokenizer::decode(const std::vector<int>& ids) const {
  std::string s;
  const auto st = sp_->Decode(ids, &s);
  ANYK_CHECK(st.ok(), "tokenizer " << path_ << ": decoding failed: " << st.ToString());
  return s;
}

std::string SpTokenizer::token_text(int id) const {
  if (id < 0 || id >= vocab() || sp_->IsControl(id) || sp_->IsUnknown(id) || sp_->IsUnused(id)) return "";
  const std::string& p = sp_->IdToPiece(id);
  if (sp_->IsByte(id)) return std::string(1, static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
  std::string out;
  static const std::string kSpace = "\xe2\x96\x81";  // U+2581, SentencePiece's space
  for (size_t i = 0; i < p.size();) {
    if (p.compare(i, kSpace.size(), kSpace) == 0) out += ' ', i += kSpace.size();
    else out += p[i++];
  }
  return out;
}

const std::string& SpTokenizer::piece(int id) const { return sp_->IdToPiece(id); }
float SpTokenizer::score(int id) const { return sp_->GetScore(id); }

int32_t SpTokenizer::token_type(int id) const {
  if (sp_->IsUnknown(id)) return 2;
  if (sp_->IsControl(id)) return 3;
  if (sp_->IsUnused(id)) return 5;
  if (sp_->IsByte(id)) return 6;
  return 1;
}

bool SpTokenizer::adds_dummy_prefix() const {
  const std::vector<int> ids = encode("a");
  return !ids.empty() && token_text(ids[0]).rfind(' ', 0) == 0;
}

int SpTokenizer::unk_id() const { return sp_->unk_id(); }
int SpTokenizer::bos_id() const { return sp_->bos_id(); }
int SpTokenizer::eos_id() const { return sp_->eos_id(); }

namespace {

// The lines of a text, without their newlines, skipping empty ones.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::string& text) : text_(text) { Next(); }
  bool done() const override { return done_; }
  void Next() override {
    while (pos_ <= text_.size()) {
      size_t e = text_.find('\n', pos_);
      if (e == std::string::npos) e = text_.size();
      line_.assign(text_, pos_, e - pos_);
      pos_ = e + 1;
      if (!line_.empty()) return;
    }
    done_ = true;
  }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::string& text_;
  size_t pos_ = 0;
  std::string line_;
  bool done_ = false;
};

}  // namespace

void train_sp(const std::string& text, int vocab, const std::string& out_path) {
  ANYK_CHECK(vocab >= 260 && vocab <= 65535,
             "--vocab-size " << vocab << " must be in [260, 65535] (256 byte pieces + unk, bos, eos + at least one "
                                          "more; uint16 shards)");
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab)},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "false"},
      {"remove_extra_whitespaces", "false"},
      {"byte_fallback", "true"},
      {"character_coverage", "0.9995"},
      {"split_digits", "true"},
      {"max_sentence_length", "16384"},
      {"input_sentence_size", "2000000"},
      {"shuffle_input_sentence", "true"},
      {"num_threads", "2"},
      {"minloglevel", "2"},
  };
  LineIterator lines(text);
  std::string proto;
  const auto st = sentencepiece::SentencePieceTrainer::Train(args, &lines, &proto);
  ANYK_CHECK(st.ok(), "prepare: training a SentencePiece model of " << vocab << " pieces failed: " << st.ToString()
                                                                     << " hint: lower --vocab-size or add text");
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  out.write(proto.data(), static_cast<std::streamsize>(proto.size()));
  ANYK_CHECK(out.good(), "prepare: cannot write " << out_path);
}

std::vector<uint16_t> encode_for_prepare(const std::string& text, const std::string& tokenizer, int vocab,
                                         double train_fraction, const std::string& out_dir,
                                         std::string* summary) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  ANYK_CHECK(!ec, "prepare: cannot create output directory " << out_dir << ": " << ec.message());
  const std::string dst = (fs::path(out_dir) / kTokenizerFile).string();
  if (tokenizer.empty() || tokenizer == "bytes") {
    fs::remove(dst, ec);  // a stale model would make byte shards look like SentencePiece ones
    if (summary) *summary = "tokenizer: bytes (vocab 256)";
    return encode_bytes(text);
  }
  if (tokenizer == "sp") {
    // Trained on the training split only: the text's first train_fraction of bytes.
    const size_t n = static_cast<size_t>(std::llround(double(text.size()) * train_fraction));
    train_sp(text.substr(0, n), vocab, dst);
  } else {
    ANYK_CHECK(fs::is_regular_file(tokenizer), "prepare: --tokenizer " << tokenizer
                                                   << " is neither bytes, sp nor a file hint: pass a .model file");
    SpTokenizer check(tokenizer);  // refuses a non-model file before it is copied
    if (!fs::exists(dst) || !fs::equivalent(tokenizer, dst))
      fs::copy_file(tokenizer, dst, fs::copy_options::overwrite_existing);
  }
  SpTokenizer sp(dst);
  std::vector<int> ids = sp.encode(text);
  std::vector<uint16_t> toks(ids.begin(), ids.end());
  if (summary)
    *summary = "tokenizer: SentencePiece " + dst + " (vocab " + std::to_string(sp.vocab()) + ", " + sp.hash() +
               "), " + std::to_string(text.size()) + " bytes -> " + std::to_string(toks.size()) + " tokens";
  return toks;
}

}  // namespace anyk::data
