// Byte-level tokenizer: every byte is its own token (vocab 256), so any text round-trips exactly
// and no vocabulary file has to travel with a checkpoint.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace anyk::data {

constexpr int kByteVocab = 256;

/// One token per byte, value 0..255.
std::vector<uint16_t> encode_bytes(std::string_view text);

/// Inverse of encode_bytes; tokens >= 256 (a model with a larger vocab) decode as '?'.
std::string decode_bytes(const uint16_t* toks, size_t n);

}  // namespace anyk::data
