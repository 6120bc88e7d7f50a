// libFuzzer harness for the token-shard reader (data/shard.cpp: read_shard), the function every
// `anyk train` / `anyk eval` run feeds train.bin and val.bin through. The input is the whole file.
// Refusing it with anyk::Error is the correct outcome; any other exception, a crash, a leak or a
// sanitizer report is a finding. Accepted shards are checked against the bytes they came from.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "data/shard.h"
#include "fuzz_util.h"
#include "core/check.h"

using namespace anyk;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::temp_dir("shard") + "/input.bin";
  fuzz::write_file(path, data, size);
  std::vector<uint16_t> toks;
  try {
    toks = data::read_shard(path, 0);
  } catch (const Error& e) {
    fuzz::check_anyk_message("fuzz_shard", e);
    return 0;
  }
  // Accepted: exactly the header's token count, and the tokens are the bytes after the header.
  if (size != data::kShardHeaderBytes + toks.size() * sizeof(uint16_t) ||
      (!toks.empty() && std::memcmp(toks.data(), data + data::kShardHeaderBytes, toks.size() * 2) != 0)) {
    std::fprintf(stderr, "fuzz_shard: read_shard accepted a file but returned other tokens\n");
    std::abort();
  }
  // With a vocabulary bound, the same file passes exactly when its largest token is below it.
  const int vocab = 256;
  bool ok = true;
  try {
    data::read_shard(path, vocab);
  } catch (const Error&) {
    ok = false;
  }
  if (ok != (data::max_token(toks) < vocab)) {
    std::fprintf(stderr, "fuzz_shard: the vocab check disagrees with max_token\n");
    std::abort();
  }
  return 0;
}
