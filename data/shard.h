// Token shards in llm.c's format, so shards are interchangeable with llm.c's tooling:
// a header of 256 little-endian int32 {magic 20240520, version 1, token count, 0...}
// followed by that many little-endian uint16 tokens.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace anyk::data {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr size_t kShardHeaderInts = 256;
constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);  // 1024

/// Writes toks (n) to path atomically: path + ".tmp", fsync, rename. Throws naming the path.
void write_shard(const std::string& path, const uint16_t* toks, size_t n);

/// Validates a shard's header against its file size (magic, version, exact size) without reading
/// the tokens; returns the token count. Every failure is an anyk::Error naming the path.
int64_t check_shard(const std::string& path);

/// Reads and validates a shard (magic, version, exact size). If vocab > 0, every token must be
/// < vocab. Every failure is an anyk::Error naming the path.
std::vector<uint16_t> read_shard(const std::string& path, int vocab = 0);

/// Largest token value, or -1 for an empty vector.
int max_token(const std::vector<uint16_t>& toks);

}  // namespace anyk::data
