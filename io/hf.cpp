// The Hugging Face Mixtral export; see hf.h.
#include "io/hf.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "core/check.h"
#include "io/fsio.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "runtime/device.h"

namespace anyk::io {

namespace {

Json mixtral_config(const ModelConfig& c, int k) {
  Json j;
  j["architectures"] = {"MixtralForCausalLM"};
  j["model_type"] = "mixtral";
  j["vocab_size"] = c.vocab;
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.expert_hidden;
  j["num_hidden_layers"] = c.layers;
  j["num_attention_heads"] = c.heads;
  j["num_key_value_heads"] = c.heads;
  j["head_dim"] = c.dim / c.heads;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.seq_len;
  j["initializer_range"] = c.init_std;
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["num_local_experts"] = c.experts;
  j["num_experts_per_tok"] = k;
  j["router_aux_loss_coef"] = c.router.lb_coef;
  j["output_router_logits"] = false;
  j["router_jitter_noise"] = 0.0;
  j["sliding_window"] = nullptr;
  j["attention_dropout"] = 0.0;
  j["tie_word_embeddings"] = true;
  j["use_cache"] = true;
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = nullptr;
  j["pad_token_id"] = nullptr;
  j["torch_dtype"] = "float32";
  return j;
}

// Mixtral's names for every anyk parameter; w13 of expert e is split into w1 (rows 0..H-1,
// the gate) and w3 (rows H..2H-1, up), w2 is taken per expert.
std::vector<SafetensorsTensor> mixtral_tensors(const ModelConfig& c,
                                      const std::function<const float*(const std::string&)>& param) {
  const int64_t C = c.dim, H = c.expert_hidden, V = c.vocab, E = c.experts;
  std::vector<SafetensorsTensor> t;
  t.push_back({"model.embed_tokens.weight", {V, C}, param("wte")});
  for (int l = 0; l < c.layers; ++l) {
    const std::string p = "layers." + std::to_string(l), m = "model.layers." + std::to_string(l);
    const float* qkv = param(p + ".attn.wqkv");
    t.push_back({m + ".input_layernorm.weight", {C}, param(p + ".ln1")});
    t.push_back({m + ".self_attn.q_proj.weight", {C, C}, qkv});
    t.push_back({m + ".self_attn.k_proj.weight", {C, C}, qkv + C * C});
    t.push_back({m + ".self_attn.v_proj.weight", {C, C}, qkv + 2 * C * C});
    t.push_back({m + ".self_attn.o_proj.weight", {C, C}, param(p + ".attn.wo")});
    t.push_back({m + ".post_attention_layernorm.weight", {C}, param(p + ".ln2")});
    t.push_back({m + ".block_sparse_moe.gate.weight", {E, C}, param(p + ".moe.router")});
    const float* w13 = param(p + ".moe.experts.w13");
    const float* w2 = param(p + ".moe.experts.w2");
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = m + ".block_sparse_moe.experts." + std::to_string(e);
      t.push_back({x + ".w1.weight", {H, C}, w13 + e * 2 * H * C});
      t.push_back({x + ".w3.weight", {H, C}, w13 + e * 2 * H * C + H * C});
      t.push_back({x + ".w2.weight", {C, H}, w2 + e * C * H});
    }
  }
  t.push_back({"model.norm.weight", {C}, param("lnf")});
  return t;
}

Json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ANYK_CHECK(in, "cannot read " << path);
  try {
    return Json::parse(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  } catch (const std::exception& e) {
    ANYK_FAIL(path << " is not valid JSON: " << e.what());
  }
}

int int_key(const Json& j, const std::string& path, const char* key) {
  ANYK_CHECK(j.contains(key) && j[key].is_number_integer(), path << " has no integer '" << key << "'");
  return j[key].get<int>();
}

}  // namespace

bool is_hf_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  return fs::is_directory(dir) && fs::is_regular_file(fs::path(dir) / "config.json");
}

ModelConfig hf_config(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  const Json j = read_json_file(path);
  ANYK_CHECK(j.value("model_type", std::string()) == "mixtral",
             path << " has model_type '" << j.value("model_type", std::string()) << "', expected 'mixtral'");
  ModelConfig c;
  c.vocab = int_key(j, path, "vocab_size");
  c.dim = int_key(j, path, "hidden_size");
  c.expert_hidden = int_key(j, path, "intermediate_size");
  c.layers = int_key(j, path, "num_hidden_layers");
  c.heads = int_key(j, path, "num_attention_heads");
  c.experts = int_key(j, path, "num_local_experts");
  c.seq_len = int_key(j, path, "max_position_embeddings");
  ANYK_CHECK(int_key(j, path, "num_key_value_heads") == c.heads,
             path << ": num_key_value_heads " << j["num_key_value_heads"] << " differs from num_attention_heads "
                  << c.heads << " (grouped-query attention), which anyk does not have");
  ANYK_CHECK(j.value("tie_word_embeddings", false), path << ": tie_word_embeddings is not true; anyk's head is tied");
  if (j.contains("head_dim") && j["head_dim"].is_number_integer())
    ANYK_CHECK(j["head_dim"].get<int>() * c.heads == c.dim,
               path << ": head_dim " << j["head_dim"] << " x " << c.heads << " heads is not hidden_size " << c.dim);
  c.rope_theta = j.value("rope_theta", c.rope_theta);
  c.norm_eps = j.value("rms_norm_eps", c.norm_eps);
  return c;
}

void load_hf_weights(const std::string& dir, LM& lm) {
  const ModelConfig& c = lm.config();
  const ModelConfig f = hf_config(dir);
  const std::string path = (std::filesystem::path(dir) / "model.safetensors").string();
  ANYK_CHECK(f.rope_theta == c.rope_theta && f.norm_eps == c.norm_eps,
             dir << "/config.json has rope_theta " << f.rope_theta << " and rms_norm_eps " << f.norm_eps
                 << " but this model has " << c.rope_theta << " and " << c.norm_eps);
  ParamStore& ps = lm.params();
  ANYK_CHECK(ps.dtype() == DType::F32, "--weights/--init-weights " << dir << ": a Mixtral directory loads into f32 "
                                                                    "parameters only");
  std::vector<std::vector<float>> host(size_t(ps.size()));  // read on the host, then copied to the device
  for (int id = 0; id < ps.size(); ++id) host[size_t(id)].resize(size_t(ps.value(id).numel()));
  const SafetensorsFile file(path);
  for (const SafetensorsTensor& t : mixtral_tensors(c, [&](const std::string& n) {
         const int id = ps.find(n);
         ANYK_CHECK(id >= 0, "the model has no parameter " << n);
         return static_cast<const float*>(host[size_t(id)].data());
       }))
    file.f32(t.name, t.shape, const_cast<float*>(t.data));
  for (int id = 0; id < ps.size(); ++id) from_host(ps.value(id), host[size_t(id)].data());
}

void write_hf_mixtral(const ModelConfig& c, const std::function<const float*(const std::string&)>& param, int k,
                      const std::string& dir) {
  ANYK_CHECK(c.router.renormalize, "--to hf: the model was trained without renormalised gates "
                                   "(router_renormalize 0); Mixtral always renormalises them");
  ANYK_CHECK(k >= 1 && k <= c.experts, "--k " << k << " is outside [1, experts=" << c.experts << "]");
  const std::filesystem::path d(dir);
  write_safetensors_f32((d / "model.safetensors").string(), {{"format", "pt"}, {"producer", "anyk convert --to hf"}},
                        mixtral_tensors(c, param));
  std::string cfg = json_text(mixtral_config(c, k));
  if (cfg.empty() || cfg.back() != '\n') cfg += '\n';
  FileWriter w((d / "config.json").string());
  w.write(cfg.data(), cfg.size());
  w.close();
}

}  // namespace anyk::io
