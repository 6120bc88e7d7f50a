// The Hugging Face Mixtral directory (io/hf.cpp): the round trip is bit-exact, config.json has
// the keys and values of transformers' MixtralConfig, model.safetensors holds exactly Mixtral's
// state-dict names and shapes (MixtralForCausalLM with tied embeddings), and other directories
// are refused in one line; io/safetensors.h (the one safetensors writer and reader) byte by byte.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "io/hf.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "model/lm.h"
#include "parallel/dispatcher.h"
#include "core/check.h"
#include "test_util.h"

using namespace anyk;
using anyk::test::TempDir;
using anyk::io::Json;

namespace {

ModelConfig tiny() {
  ModelConfig c;
  c.layers = 2, c.dim = 8, c.heads = 2, c.experts = 3, c.expert_hidden = 4, c.seq_len = 16, c.vocab = 32;
  c.rope_theta = 5000, c.norm_eps = 1e-6;
  return c;
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write(const LM& lm, int k, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const ParamStore& ps = lm.params();
  io::write_hf_mixtral(lm.config(), [&](const std::string& n) { return ps.value(ps.find(n)).ptr<float>(); }, k,
                       dir.string());
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("convert --to hf round trip: every parameter bit-exact") {
  TempDir d("hf");
  LocalDispatcher disp(tiny().experts);
  LM a(tiny(), disp), b(tiny(), disp);
  a.init(1);
  b.init(2);
  write(a, 2, d.path / "m");
  REQUIRE(io::is_hf_dir((d.path / "m").string()));
  io::load_hf_weights((d.path / "m").string(), b);
  for (int id = 0; id < a.params().size(); ++id) {
    const Tensor x = a.params().value(id), y = b.params().value(id);
    CHECK_MESSAGE(std::memcmp(x.ptr<float>(), y.ptr<float>(), size_t(x.numel()) * 4) == 0, a.params().info(id).name);
  }
}

TEST_CASE("config.json and the safetensors names follow MixtralConfig / MixtralForCausalLM") {
  TempDir d("hf");
  LocalDispatcher disp(tiny().experts);
  LM a(tiny(), disp);
  a.init(1);
  write(a, 2, d.path / "m");
  const Json cfg = Json::parse(slurp(d.path / "m" / "config.json"));
  CHECK(cfg["model_type"] == "mixtral");
  CHECK(cfg["architectures"][0] == "MixtralForCausalLM");
  CHECK(cfg["vocab_size"] == 32);
  CHECK(cfg["hidden_size"] == 8);
  CHECK(cfg["intermediate_size"] == 4);
  CHECK(cfg["num_hidden_layers"] == 2);
  CHECK(cfg["num_attention_heads"] == 2);
  CHECK(cfg["num_key_value_heads"] == 2);
  CHECK(cfg["num_local_experts"] == 3);
  CHECK(cfg["num_experts_per_tok"] == 2);
  CHECK(cfg["max_position_embeddings"] == 16);
  CHECK(cfg["rope_theta"] == 5000.0);
  CHECK(cfg["rms_norm_eps"] == 1e-6);
  CHECK(cfg["tie_word_embeddings"] == true);
  CHECK(cfg["hidden_act"] == "silu");
  CHECK(cfg["torch_dtype"] == "float32");
  const std::string st = slurp(d.path / "m" / "model.safetensors");
  uint64_t len;
  std::memcpy(&len, st.data(), 8);
  const Json h = Json::parse(st.substr(8, len));
  std::set<std::string> want = {"model.embed_tokens.weight", "model.norm.weight"};
  for (int l = 0; l < 2; ++l) {
    const std::string m = "model.layers." + std::to_string(l);
    for (const char* x : {".input_layernorm.weight", ".post_attention_layernorm.weight", ".self_attn.q_proj.weight",
                          ".self_attn.k_proj.weight", ".self_attn.v_proj.weight", ".self_attn.o_proj.weight",
                          ".block_sparse_moe.gate.weight"})
      want.insert(m + x);
    for (int e = 0; e < 3; ++e)
      for (const char* w : {".w1.weight", ".w2.weight", ".w3.weight"})
        want.insert(m + ".block_sparse_moe.experts." + std::to_string(e) + w);
  }
  std::set<std::string> got;
  for (auto it = h.begin(); it != h.end(); ++it)
    if (it.key() != "__metadata__") got.insert(it.key());
  CHECK(got == want);
  using V = std::vector<int64_t>;
  CHECK(h["model.embed_tokens.weight"]["shape"].get<V>() == V{32, 8});
  CHECK(h["model.layers.1.block_sparse_moe.gate.weight"]["shape"].get<V>() == V{3, 8});
  CHECK(h["model.layers.1.block_sparse_moe.experts.2.w1.weight"]["shape"].get<V>() == V{4, 8});
  CHECK(h["model.layers.1.block_sparse_moe.experts.2.w2.weight"]["shape"].get<V>() == V{8, 4});
  CHECK(h["model.layers.1.self_attn.k_proj.weight"]["dtype"] == "F32");
  // w1 is the gate half of w13 (rows 0..H-1), w3 the up half: expert 2 of layer 1, first value.
  const ParamStore& ps = a.params();
  const float* w13 = ps.value(ps.find("layers.1.moe.experts.w13")).ptr<float>();
  float w1, w3;
  const size_t data0 = 8 + len;
  const std::string x = "model.layers.1.block_sparse_moe.experts.2.";
  std::memcpy(&w1, st.data() + data0 + h[x + "w1.weight"]["data_offsets"][0].get<size_t>(), 4);
  std::memcpy(&w3, st.data() + data0 + h[x + "w3.weight"]["data_offsets"][0].get<size_t>(), 4);
  CHECK(w1 == w13[2 * 8 * 8]);
  CHECK(w3 == w13[2 * 8 * 8 + 4 * 8]);
}

TEST_CASE("a directory that is not this model's Mixtral is refused in one line naming the mismatch") {
  TempDir d("hf");
  LocalDispatcher disp(tiny().experts);
  LM a(tiny(), disp);
  a.init(1);
  write(a, 1, d.path / "m");
  const std::string cfg = slurp(d.path / "m" / "config.json");
  auto with = [&](const std::string& from, const std::string& to) {
    std::filesystem::create_directories(d.path / "x");
    std::filesystem::copy_file(d.path / "m" / "model.safetensors", d.path / "x" / "model.safetensors",
                               std::filesystem::copy_options::overwrite_existing);
    std::string c = cfg;
    REQUIRE(c.find(from) != std::string::npos);
    c.replace(c.find(from), from.size(), to);
    std::ofstream(d.path / "x" / "config.json") << c;
    return (d.path / "x").string();
  };
  LM b(tiny(), disp);
  CHECK(error_of([&] { io::hf_config(with("\"mixtral\"", "\"llama\"")); }).find("expected 'mixtral'") !=
        std::string::npos);
  CHECK(error_of([&] { io::hf_config(with("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 1")); })
            .find("grouped-query") != std::string::npos);
  CHECK(error_of([&] { io::load_hf_weights(with("\"rope_theta\": 5000.0", "\"rope_theta\": 10000.0"), b); })
            .find("rope_theta 10000") != std::string::npos);
  LocalDispatcher disp4(4);
  ModelConfig c4 = tiny();
  c4.experts = 4;
  LM e4(c4, disp4);
  CHECK(error_of([&] { io::load_hf_weights((d.path / "m").string(), e4); })
            .find("block_sparse_moe.gate.weight has shape [3,8], this model needs [4,8]") != std::string::npos);
}

TEST_CASE("io/safetensors: the layout read back by hand; another dtype, a cut file, a bad header are refused") {
  TempDir d("hf");
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f}, b = {42.0f};
  const std::string path = (d.path / "t.safetensors").string();
  std::vector<int64_t> calls;
  io::write_safetensors_f32(path, {{"format", "pt"}, {"note", "x"}}, {{"a", {2, 3}, a.data()}, {"b", {1}, b.data()}},
                            [&](int64_t i, int64_t n) { calls.push_back(i * 10 + n); });
  CHECK(calls == std::vector<int64_t>{12, 22});
  // By hand: u64 header length (a multiple of 8), the JSON (metadata first), then a and b.
  const std::string st = slurp(path);
  uint64_t len;
  std::memcpy(&len, st.data(), 8);
  CHECK(len % 8 == 0);
  REQUIRE(st.size() == 8 + len + 7 * 4);
  const Json h = Json::parse(st.substr(8, len));
  CHECK(h.begin().key() == "__metadata__");
  CHECK(h["__metadata__"]["note"] == "x");
  CHECK(h["a"]["data_offsets"] == Json({0, 24}));
  CHECK(h["b"]["data_offsets"] == Json({24, 28}));
  CHECK(std::memcmp(st.data() + 8 + len, a.data(), 24) == 0);
  CHECK(std::memcmp(st.data() + 8 + len + 24, b.data(), 4) == 0);
  // The reader returns the same values.
  const io::SafetensorsFile f(path);
  std::vector<float> ra(6), rb(1);
  f.f32("a", {2, 3}, ra.data());
  f.f32("b", {1}, rb.data());
  CHECK(ra == a);
  CHECK(rb == b);
  CHECK(error_of([&] { f.f32("c", {1}, rb.data()); }).find("t.safetensors has no tensor 'c'") != std::string::npos);
  CHECK(error_of([&] { f.f32("a", {3, 2}, ra.data()); }).find("a has shape [2,3], this model needs [3,2]") !=
        std::string::npos);
  // Another dtype (same header length), a file cut short, a header length past the end.
  auto variant = [&](std::string bytes) {
    const std::string p = (d.path / "v.safetensors").string();
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  };
  std::string f16 = st;
  f16.replace(f16.find("\"F32\""), 5, "\"F16\"");
  CHECK(error_of([&] { io::SafetensorsFile(variant(f16)).f32("a", {2, 3}, ra.data()); }).find("a is F16, anyk reads F32") !=
        std::string::npos);
  CHECK(error_of([&] { io::SafetensorsFile(variant(st.substr(0, st.size() - 2))).f32("b", {1}, rb.data()); })
            .find("the data offsets of b do not fit the file") != std::string::npos);
  std::string huge = st;
  huge[7] = char(0x7f);
  CHECK(error_of([&] { io::SafetensorsFile{variant(huge)}; }).find("is not a safetensors file") != std::string::npos);
}
