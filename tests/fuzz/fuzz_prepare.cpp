// libFuzzer harness for `anyk prepare`'s input path (data/prepare.cpp, data/tokenizer.cpp): the
// input bytes become a text file (or, when the first byte is odd, two files in a directory, to
// take the directory walk), are prepared into train.bin and val.bin and read back. The first byte
// also picks --val-fraction. anyk::Error (too little text, ...) is the correct refusal; when
// prepare succeeds, train.bin + val.bin must hold exactly the input bytes, in order.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "fuzz_util.h"
#include "core/check.h"

using namespace anyk;
namespace fs = std::filesystem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string dir = fuzz::temp_dir("prepare");
  const uint8_t ctl = data[0];
  const uint8_t* text = data + 1;
  const size_t n = size - 1;
  // val_fraction in (0, 1): 1/64 .. 63/64 by the control byte's upper bits.
  const double val_fraction = double(1 + (ctl >> 2) % 63) / 64.0;
  std::error_code ec;
  fs::remove_all(dir + "/in", ec);
  fs::remove_all(dir + "/out", ec);
  std::string input;
  if (ctl & 1) {  // a directory of two files, split in the middle (walked in sorted order: a, b)
    fs::create_directories(dir + "/in");
    fuzz::write_file(dir + "/in/a.txt", text, n / 2);
    fuzz::write_file(dir + "/in/b.txt", text + n / 2, n - n / 2);
    input = dir + "/in";
  } else {
    input = dir + "/in.txt";
    fuzz::write_file(input, text, n);
  }
  data::PrepareStats st;
  try {
    st = data::prepare({input}, dir + "/out", val_fraction);
  } catch (const Error& e) {
    fuzz::check_anyk_message("fuzz_prepare", e);
    return 0;
  }
  std::vector<uint16_t> train = data::read_shard(dir + "/out/train.bin", data::kByteVocab);
  std::vector<uint16_t> val = data::read_shard(dir + "/out/val.bin", data::kByteVocab);
  std::string back = data::decode_bytes(train.data(), train.size()) + data::decode_bytes(val.data(), val.size());
  if (st.bytes != int64_t(n) || st.train_tokens != int64_t(train.size()) || st.val_tokens != int64_t(val.size()) ||
      back.size() != n || (n > 0 && std::memcmp(back.data(), text, n) != 0)) {
    std::fprintf(stderr, "fuzz_prepare: the shards do not hold the input bytes\n");
    std::abort();
  }
  return 0;
}
