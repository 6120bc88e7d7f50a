// Byte-level tokenizer: encode is a widening copy, decode a narrowing one with '?' for tokens
// outside the byte range.
#include "data/tokenizer.h"

namespace anyk::data {

std::vector<uint16_t> encode_bytes(std::string_view text) {
  std::vector<uint16_t> toks(text.size());
  for (size_t i = 0; i < text.size(); ++i) toks[i] = static_cast<unsigned char>(text[i]);
  return toks;
}

std::string decode_bytes(const uint16_t* toks, size_t n) {
  std::string s(n, '?');
  for (size_t i = 0; i < n; ++i)
    if (toks[i] < kByteVocab) s[i] = static_cast<char>(static_cast<unsigned char>(toks[i]));
  return s;
}

}  // namespace anyk::data
