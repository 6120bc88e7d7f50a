// The GGUF writer (io/gguf.cpp): f16 rounding against the compiler's _Float16 conversion, the
// GPT-2 byte pieces against the published mapping, the file layout read back by hand, and the
// one-line refusals. That llama.cpp loads the export and computes anyk's logits is
// tools/llama_test.sh (the real engine).
#include <doctest/doctest.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "skip.h"

#include "io/gguf.h"
#include "core/check.h"
#include "test_util.h"

using namespace anyk;
using anyk::test::TempDir;

namespace {

// The reference conversion: the compiler's _Float16 where it has one (GCC 12), else the CPU's
// F16C instruction (clang 14, the sanitizer build, has no _Float16 on x86); both are IEEE
// round-to-nearest-even. Neither: the case is reported as skipped.
#if defined(__FLT16_MAX__)
constexpr bool kHaveReference = true;
uint16_t reference_f16(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}
#elif defined(__F16C__)
constexpr bool kHaveReference = true;
uint16_t reference_f16(float f) { return uint16_t(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)); }
#else
constexpr bool kHaveReference = false;
uint16_t reference_f16(float) { return 0; }
#endif

template <class T> T read_at(const std::string& s, size_t& at) {
  T v;
  std::memcpy(&v, s.data() + at, sizeof(T));
  at += sizeof(T);
  return v;
}
std::string read_str(const std::string& s, size_t& at) {
  const uint64_t n = read_at<uint64_t>(s, at);
  std::string out = s.substr(at, n);
  at += n;
  return out;
}

}  // namespace

TEST_CASE("f32_to_f16 rounds as the compiler's _Float16 does, subnormals, overflow and NaN included") {
  if (!kHaveReference) {
    anyk::test::skip_case("no reference f16 conversion in this build (neither _Float16 nor F16C)");
    return;
  }
  std::vector<float> xs = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 5.96e-8f, 2.98e-8f,
                           6.1035e-5f, 6.09e-5f, 1e30f, -1e30f, 0.1f, 1.0f / 3.0f};
  uint32_t state = 12345;
  for (int i = 0; i < 200000; ++i) {  // random bit patterns over the whole float range
    state = state * 1664525u + 1013904223u;
    float f;
    std::memcpy(&f, &state, 4);
    xs.push_back(f);
  }
  int bad = 0;
  for (float f : xs) {
    if (f != f) {
      CHECK((io::f32_to_f16(f) & 0x7c00) == 0x7c00);
      CHECK((io::f32_to_f16(f) & 0x3ff) != 0);
      continue;
    }
    if (io::f32_to_f16(f) != reference_f16(f) && bad++ < 5)
      FAIL_CHECK("f32_to_f16(" << f << ") = " << io::f32_to_f16(f) << ", _Float16 gives " << reference_f16(f));
  }
  CHECK(bad == 0);
}

TEST_CASE("gpt2_byte_piece is GPT-2's bytes_to_unicode: 256 distinct pieces") {
  std::set<std::string> seen;
  for (int b = 0; b < 256; ++b) seen.insert(io::gpt2_byte_piece(b));
  CHECK(seen.size() == 256);
  CHECK(io::gpt2_byte_piece('a') == "a");
  CHECK(io::gpt2_byte_piece('~') == "~");
  CHECK(io::gpt2_byte_piece(0) == "\xc4\x80");     // U+0100 'Ā'
  CHECK(io::gpt2_byte_piece(' ') == "\xc4\xa0");   // U+0120 'Ġ', GPT-2's space
  CHECK(io::gpt2_byte_piece('\n') == "\xc4\x8a");  // U+010A 'Ċ'
  CHECK(io::gpt2_byte_piece(0xad) == "\xc5\x83");  // U+0143, the last remapped byte
  CHECK(io::gpt2_byte_piece(0xe9) == "\xc3\xa9");  // 'é' stands for itself
}

TEST_CASE("GGUFWriter: header, typed key-values, tensor infos innermost first, 32-byte aligned data") {
  TempDir d("gguf");
  const std::string path = (d.path / "t.gguf").string();
  io::GGUFWriter g;
  g.add_string("general.architecture", "llama");
  g.add_u32("llama.block_count", 3);
  g.add_tensor("a", {3, 2}, {1, 2, 3, 4, 5, 6}, io::GGUFWriter::Type::F32);
  g.add_tensor("b", {5}, {1, -2, 0.5f, 0, 65504}, io::GGUFWriter::Type::F16);
  g.write(path);
  std::ifstream in(path, std::ios::binary);
  const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t at = 0;
  CHECK(s.substr(0, 4) == "GGUF");
  at = 4;
  CHECK(read_at<uint32_t>(s, at) == 3);
  CHECK(read_at<uint64_t>(s, at) == 2);  // tensors
  CHECK(read_at<uint64_t>(s, at) == 2);  // key-values
  CHECK(read_str(s, at) == "general.architecture");
  CHECK(read_at<uint32_t>(s, at) == 8);  // string
  CHECK(read_str(s, at) == "llama");
  CHECK(read_str(s, at) == "llama.block_count");
  CHECK(read_at<uint32_t>(s, at) == 4);  // uint32
  CHECK(read_at<uint32_t>(s, at) == 3);
  CHECK(read_str(s, at) == "a");
  CHECK(read_at<uint32_t>(s, at) == 2);
  CHECK(read_at<uint64_t>(s, at) == 3);
  CHECK(read_at<uint64_t>(s, at) == 2);
  CHECK(read_at<uint32_t>(s, at) == 0);  // F32
  CHECK(read_at<uint64_t>(s, at) == 0);
  CHECK(read_str(s, at) == "b");
  CHECK(read_at<uint32_t>(s, at) == 1);
  CHECK(read_at<uint64_t>(s, at) == 5);
  CHECK(read_at<uint32_t>(s, at) == 1);   // F16
  CHECK(read_at<uint64_t>(s, at) == 32);  // 24 bytes of "a", padded to 32
  const size_t data = (at + 31) / 32 * 32;
  REQUIRE(s.size() == data + 32 + 32);
  at = data;
  for (float want : {1, 2, 3, 4, 5, 6}) CHECK(read_at<float>(s, at) == want);
  at = data + 32;
  for (float want : {1.0f, -2.0f, 0.5f, 0.0f, 65504.0f}) CHECK(read_at<uint16_t>(s, at) == reference_f16(want));
}

TEST_CASE("write_llama_gguf refuses what llama.cpp's llama MoE cannot express, in one line") {
  TempDir d("gguf");
  ModelConfig c;
  c.layers = 1, c.dim = 8, c.heads = 2, c.experts = 2, c.expert_hidden = 8, c.seq_len = 8;
  std::vector<float> zeros(1 << 16);
  auto param = [&](const std::string&) { return zeros.data(); };
  const std::string out = (d.path / "m.gguf").string();
  auto error = [&](const ModelConfig& m, int k) {
    try {
      io::write_llama_gguf(m, param, io::GGUFExport{k, false, ""}, out);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  ModelConfig v = c;
  v.vocab = 300;
  CHECK(error(v, 1).find("vocab is 300") != std::string::npos);
  ModelConfig r = c;
  r.router.renormalize = false;
  CHECK(error(r, 1).find("renormalised") != std::string::npos);
  CHECK(error(c, 3).find("--k 3 is outside [1, experts=2]") != std::string::npos);
  CHECK(error(c, 2).empty());
  CHECK(std::filesystem::is_regular_file(out));
}
