// `anyk generate`: loads a model like `anyk eval`, reads the prompt(s), picks the K setting
// (--k, --layer-k, --budget, --expert-top-p), generates with the KV-cache decoder (model/generate.h),
// streams a single prompt's text to stdout as it is produced and ends with one stderr line of
// throughput, mean K and active parameters per token.
#include "launch/generate.h"

#include <omp.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "data/loader.h"
#include "data/shard.h"
#include "data/token_shards.h"
#include "eval/analysis.h"
#include "io/checkpoint.h"
#include "io/fsio.h"
#include "io/hf.h"
#include "io/weights.h"
#include "launch/tokenizer.h"
#include "launch/threads.h"
#include "model/generate.h"
#include "core/check.h"
#include "runtime/devices.h"

namespace anyk::launch {

using namespace io;
using eval::k_setting_name;
using eval::BudgetResult;
using eval::greedy_budget;

namespace {

std::string read_whole(const std::string& path, const char* option) {
  ANYK_CHECK(std::filesystem::is_regular_file(path),
             "--" << option << " " << path << " does not exist (or is not a file)");
  std::ifstream in(path, std::ios::binary);
  ANYK_CHECK(in, "cannot read --" << option << " " << path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string strip_one_newline(std::string s) {
  if (!s.empty() && s.back() == '\n') s.pop_back();
  if (!s.empty() && s.back() == '\r') s.pop_back();
  return s;
}

std::vector<int> encode(const std::string& text, int vocab, int index, const data::SpTokenizer* sp) {
  if (sp) {
    std::vector<int> t = sp->encode(text);
    for (int id : t)
      ANYK_CHECK(id < vocab, "prompt " << index << " encodes to id " << id << " but the model's vocab is " << vocab);
    return t;
  }
  std::vector<int> t;
  t.reserve(text.size());
  for (unsigned char ch : text) {
    ANYK_CHECK(int(ch) < vocab, "prompt " << index << " holds byte " << int(ch) << " but the model's vocab is "
                                          << vocab << " hint: generation reads prompts as bytes");
    t.push_back(int(ch));
  }
  return t;
}

// A SentencePiece id prints as its bytes (data::SpTokenizer::token_text); a byte model's ids >= 256
// as '?' (data::decode_bytes).
void put_token(int t, const data::SpTokenizer* sp) {
  if (sp) {
    const std::string s = sp->token_text(t);
    std::fwrite(s.data(), 1, s.size(), stdout);
    return;
  }
  std::fputc(t < 256 ? t : '?', stdout);
}

std::string human(double v) {
  char b[32];
  if (v >= 1e6) std::snprintf(b, sizeof b, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(b, sizeof b, "%.1fk", v / 1e3);
  else std::snprintf(b, sizeof b, "%.0f", v);
  return b;
}

}  // namespace

InferenceModel load_inference_model(const std::string& run_dir, const std::string& checkpoint,
                                    const std::string& weights, Device device) {
  ANYK_CHECK(checkpoint.empty() || weights.empty(), "give at most one of --checkpoint, --weights");
  ANYK_CHECK(!run_dir.empty() || !checkpoint.empty() || !weights.empty(),
             "--run-dir, --checkpoint or --weights is required hint: see anyk generate --help");
  InferenceModel m;
  TrainOptions& o = m.train;
  ModelConfig mc;
  std::string ckpt_dir;
  CheckpointMeta meta;
  if (!checkpoint.empty()) {
    ckpt_dir = resolve_checkpoint(checkpoint, run_dir);
    meta = read_checkpoint_meta(ckpt_dir);
    read_train_config_text(meta.config_ini, ckpt_dir + "/meta.h5 attribute config_ini", o);
    mc = meta.model;
  } else if (!weights.empty() && is_hf_dir(weights)) {  // a Mixtral directory (anyk convert --to hf)
    mc = hf_config(weights);
  } else if (!weights.empty()) {
    ANYK_CHECK(std::filesystem::is_regular_file(weights), "weights file " << weights << " not found");
    mc = weights_config(weights);
    read_weights_config_ini(weights, o);
    merge_weights_tokenizer(o, weights);
  } else {
    const std::string cfg_path = run_dir + "/config.ini";
    ANYK_CHECK(std::filesystem::is_regular_file(cfg_path),
               cfg_path << " not found hint: --run-dir must be a directory written by anyk train");
    read_train_config(cfg_path, o);
    mc = model_config(o);
    // The weights must be of the model config.ini describes: compare before reading tensors.
    const std::string wpath = run_dir + "/model.h5";
    ANYK_CHECK(std::filesystem::is_regular_file(wpath),
               wpath << " not found hint: train a model into this run dir first (or pass --checkpoint)");
    ModelConfig saved = weights_config(wpath);
    merge_weights_tokenizer(o, wpath);
    const std::pair<const char*, std::pair<int, int>> fields[] = {
        {"layers", {saved.layers, mc.layers}},   {"dim", {saved.dim, mc.dim}},
        {"heads", {saved.heads, mc.heads}},      {"experts", {saved.experts, mc.experts}},
        {"expert-hidden", {saved.expert_hidden, mc.expert_hidden}},
        {"seq-len", {saved.seq_len, mc.seq_len}}, {"vocab", {saved.vocab, mc.vocab}}};
    for (const auto& [name, v] : fields)
      ANYK_CHECK(v.first == v.second, wpath << " is a model with --" << name << " " << v.first << " but "
                                            << cfg_path << " says --" << name << " " << v.second
                                            << " hint: the run dir holds files of two different models; "
                                               "pass the file alone with --weights");
    mc = saved;
  }
  if (o.threads == 0) o.threads = omp_get_max_threads();
  mc.validate();
  m.dispatcher = std::make_unique<LocalDispatcher>(mc.experts);
  m.lm = std::make_unique<LM>(mc, *m.dispatcher, device);
  if (!ckpt_dir.empty()) {
    m.source = ckpt_dir;
    read_checkpoint_tensors(ckpt_dir, meta, dense_refs(m.lm->params(), nullptr, 0),
                            expert_refs(m.lm->params(), nullptr, 1, 0));
  } else {
    m.source = weights.empty() ? run_dir : weights;
    if (!weights.empty() && is_hf_dir(weights))
      load_hf_weights(weights, *m.lm);
    else
      load_weights(weights.empty() ? run_dir + "/model.h5" : weights, *m.lm);
  }
  // The tokenizer: next to the weights (a run dir, a Mixtral directory, a checkpoint's run dir),
  // else where config.ini names it; its hash must be the one the model was trained with.
  namespace fs = std::filesystem;
  std::vector<std::string> dirs = {run_dir};
  if (!weights.empty() && is_hf_dir(weights)) {
    o.tokenizer_hash = data::dir_tokenizer_hash(weights);
    dirs.push_back(weights);
  } else if (!weights.empty()) {
    dirs.push_back(fs::path(weights).parent_path().string());
  }
  if (!ckpt_dir.empty()) dirs.push_back((fs::path(ckpt_dir) / ".." / "..").lexically_normal().string());
  m.tokenizer = load_model_tokenizer(o, dirs, "the model " + m.source);
  return m;
}

namespace {

struct GenArgs {
  std::string run_dir, checkpoint, weights, prompt, prompt_file, prompts_file, k_text, layer_k, data_dir;
  std::string logits_out;
  std::string device = "cpu", precision = "f32", decode_weights = "f32";
  double budget = 0, top_p = 0, temperature = 0;
  int max_new = 200, top_k = 0, threads = 0, batch = 0;
  int64_t seed = 1, eval_windows = kDefaultEvalWindows;
  bool has_prompt = false;
};

void add_generate_options(po::options_description& desc, GenArgs& a) {
  desc.add_options()("run-dir", po::value(&a.run_dir), "run directory holding config.ini and model.h5")(
      "checkpoint", po::value(&a.checkpoint),
      "a checkpoint: its step directory, a `latest` file, or `latest` (with --run-dir)")(
      "weights", po::value(&a.weights),
                                         "a weights file (a model.h5 or a consolidated checkpoint) or a Mixtral "
                                         "directory (anyk convert --to hf)")(
      "prompt", po::value(&a.prompt), "the prompt text")(
      "prompt-file", po::value(&a.prompt_file), "read the prompt from this file (one trailing newline dropped)")(
      "prompts", po::value(&a.prompts_file),
      "one prompt per line (blank lines skipped), generated together as one batch; each text is "
      "printed after `--- i ---` when all are done")(
      "max-new", po::value(&a.max_new)->default_value(200), "tokens to generate per prompt")(
      "k", po::value(&a.k_text), "K for every layer (default: the largest K the model trained with); "
                               "with --expert-top-p, the cap of the per-token K")(
      "layer-k", po::value(&a.layer_k), "one K per layer, comma-separated (length = layers)")(
      "budget", po::value(&a.budget),
      "average K per layer: the per-layer schedule of `anyk eval --budget` (greedy on --data's "
      "validation windows)")(
      "expert-top-p", po::value(&a.top_p),
      "per-token K (experts, not tokens): the smallest k whose top-k router probability mass reaches P (in "
      "(0, 1]); --top-p is its deprecated name")(
      "data", po::value(&a.data_dir), "data directory holding val.bin or val_*.bin shards (for --budget)")(
      "eval-windows", po::value(&a.eval_windows)->default_value(kDefaultEvalWindows),
      "validation windows for --budget (0 = all; the same default as anyk eval)")(
      "batch", po::value(&a.batch)->default_value(0), "windows per forward for --budget (0 = the run's --batch)")(
      "temperature", po::value(&a.temperature)->default_value(0.0), "sampling temperature (0 = greedy)")(
      "top-k", po::value(&a.top_k)->default_value(0), "sample among the K most likely tokens (0 = all)")(
      "seed", po::value(&a.seed)->default_value(1), "sampling seed: the same seed gives the same text")(
      "threads", po::value(&a.threads)->default_value(0), kThreadsHelp)(
      "decode-weights", po::value(&a.decode_weights)->default_value("f32"),
      "f32 | bf16: the decoder's matrices (attention, experts, embedding and head) as they are, or a bf16 "
      "copy: half the bytes per decode step, logits within about 2^-8 relative of f32's but not "
      "bit-identical (CPU, f32 models)")(
      "logits-out", po::value(&a.logits_out),
      "generate nothing: write the next-token logits at every prompt position to this file (float64 "
      "little-endian, prompt after prompt, one row of vocab values per token), for comparing with "
      "another engine");
  add_device_options(desc, a.device, a.precision);
}

void check_generate_values(const GenArgs& a, const po::variables_map& vm);

// Validates the options and prepares the device; returns use_device's line.
std::string check_generate_args(const GenArgs& a, const po::variables_map& vm) {
  as_usage_error([&] { check_generate_values(a, vm); });
  const std::string device_line = use_device(parse_device(a.device), parse_bf16(a.precision));  // bf16: CUDA only
  if (a.budget != 0) check_data_dir(a.data_dir);
  ANYK_CHECK(a.prompt_file.empty() || std::filesystem::is_regular_file(a.prompt_file),
             "--prompt-file " << a.prompt_file << " does not exist (or is not a file)");
  ANYK_CHECK(a.prompts_file.empty() || std::filesystem::is_regular_file(a.prompts_file),
             "--prompts " << a.prompts_file << " does not exist (or is not a file)");
  return device_line;
}

// The option values alone (a failure is a usage error).
void check_generate_values(const GenArgs& a, const po::variables_map& vm) {
  (void)parse_device(a.device);  // names the choices on anything else
  ANYK_CHECK(int(a.has_prompt) + int(!a.prompt_file.empty()) + int(!a.prompts_file.empty()) <= 1,
             "give at most one of --prompt, --prompt-file, --prompts");
  ANYK_CHECK(a.max_new >= 1, "--max-new " << a.max_new << " must be >= 1");
  ANYK_CHECK(a.temperature >= 0 && std::isfinite(a.temperature), "--temperature " << a.temperature << " must be >= 0");
  ANYK_CHECK(a.top_k >= 0, "--top-k " << a.top_k << " must be >= 0 (0 = all tokens)");
  ANYK_CHECK(a.threads >= 0, "--threads " << a.threads << " must be >= 0");
  ANYK_CHECK(a.decode_weights == "f32" || a.decode_weights == "bf16",
             "--decode-weights '" << a.decode_weights << "' is not a choice hint: give f32 (the default) or bf16");
  ANYK_CHECK(a.decode_weights == "f32" || parse_device(a.device) == Device::CPU,
             "--decode-weights bf16 runs on the CPU only (--device " << a.device << ") hint: drop --decode-weights "
                                                                      "or use --device cpu");
  ANYK_CHECK(vm.count("expert-top-p") == 0 || (a.top_p > 0 && a.top_p <= 1),
             "--expert-top-p " << a.top_p << " must be in (0, 1]");
  ANYK_CHECK(vm.count("budget") == 0 || a.budget > 0, "--budget " << a.budget << " must be > 0");
  const int modes = int(!a.k_text.empty() && a.top_p == 0) + int(!a.layer_k.empty()) + int(a.budget != 0) + int(a.top_p != 0);
  ANYK_CHECK(modes <= 1, "give at most one of --k, --layer-k, --budget, --expert-top-p (--expert-top-p takes --k "
                         "as its cap) "
                         "hint: see anyk generate --help");
  ANYK_CHECK(a.budget == 0 || !a.data_dir.empty(),
             "--budget needs --data DIR: the schedule is chosen on its validation windows");
  ANYK_CHECK(a.eval_windows >= 0, "--eval-windows " << a.eval_windows << " must be >= 0 (0 = all)");
}

// The prompts (--prompt, --prompt-file, --prompts or stdin) as texts and byte tokens.
void read_prompts(const GenArgs& a, const InferenceModel& m, std::vector<std::string>& texts,
                  std::vector<std::vector<int>>& prompts) {
  const ModelConfig& mc = m.lm->config();
  // The prompts, as byte tokens.
  if (a.has_prompt) {
    texts.push_back(a.prompt);
  } else if (!a.prompt_file.empty()) {
    texts.push_back(strip_one_newline(read_whole(a.prompt_file, "prompt-file")));
  } else if (!a.prompts_file.empty()) {
    std::istringstream in(read_whole(a.prompts_file, "prompts"));
    for (std::string line; std::getline(in, line);) {
      line = strip_one_newline(line);
      if (!line.empty()) texts.push_back(line);
    }
    ANYK_CHECK(!texts.empty(), "--prompts " << a.prompts_file << " holds no prompt (every line is blank)");
  } else {
    std::string all((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    texts.push_back(strip_one_newline(all));
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    ANYK_CHECK(!texts[i].empty(), (texts.size() == 1 ? std::string("the prompt") : "prompt " + std::to_string(i + 1))
                                      << " is empty hint: give --prompt TEXT, --prompt-file F or text on stdin");
    prompts.push_back(encode(texts[i], mc.vocab, int(i) + 1, m.tokenizer.get()));
    const char* unit = m.tokenizer ? " tokens" : " bytes";
    ANYK_CHECK(int(prompts.back().size()) <= mc.seq_len,
               (texts.size() == 1 ? std::string("the prompt") : "prompt " + std::to_string(i + 1))
                   << " is " << prompts.back().size() << unit << " but the model's context is " << mc.seq_len
                   << " tokens (seq_len) hint: shorten it to its last " << mc.seq_len << unit
                   << "; generation itself continues past the context");
  }

}

// The K setting (--layer-k, --budget, --k, --expert-top-p or the trained K) into go; returns its name.
std::string choose_k(const GenArgs& a, const InferenceModel& m, GenerateOptions& go) {
  const ModelConfig& mc = m.lm->config();
  const int L = mc.layers, E = mc.experts;
  go.max_new = a.max_new;
  go.sample.temperature = a.temperature;
  go.sample.top_k = a.top_k;
  go.sample.seed = uint64_t(a.seed);
  int trained_k = m.train.k_strategy == "fixed" || m.train.k_strategy == "emoe" ? m.train.k : m.train.k_max;
  trained_k = std::max(1, std::min(trained_k, E));
  std::string k_desc;
  if (!a.layer_k.empty()) {
    go.k.k = parse_int_list(a.layer_k, "layer-k");
    ANYK_USAGE_CHECK(int(go.k.k.size()) == L, "--layer-k has " << go.k.k.size() << " values but the model has " << L
                                                         << " layers");
    for (int k : go.k.k)
      ANYK_USAGE_CHECK(k >= 1 && k <= E, "--layer-k value " << k << " is outside [1, experts=" << E << "]");
  } else if (a.budget != 0) {
    ANYK_USAGE_CHECK(a.budget >= 1 && a.budget <= E, "--budget " << a.budget << " is outside [1, experts=" << E << "]");
    data::Loader val(data::TokenShards::open(a.data_dir, "val", mc.vocab), mc.seq_len, uint64_t(m.train.seed));
    Arena arena(size_t(64) << 20, m.lm->params().device());
    BudgetResult br = greedy_budget(*m.lm, val, a.budget, a.batch > 0 ? a.batch : m.train.batch, a.eval_windows, arena);
    go.k.k = br.greedy.k;
    k_desc = " (greedy schedule for budget " + std::to_string(a.budget).substr(0, 4) + ")";
  } else {
    int K = trained_k;
    if (!a.k_text.empty()) {
      auto ks = parse_int_list(a.k_text, "k");
      ANYK_USAGE_CHECK(ks.size() == 1, "--k takes one value here, got " << a.k_text << " hint: per-layer K is --layer-k");
      K = ks[0];
      ANYK_USAGE_CHECK(K >= 1 && K <= E, "--k " << K << " is outside [1, experts=" << E << "]");
    } else if (a.top_p > 0) {
      K = E;
    }
    go.k.k.assign(size_t(L), K);
    go.k.top_p = a.top_p;
  }
  return a.top_p > 0 ? "expert-top-p " + std::to_string(a.top_p).substr(0, 4) + " (K <= " +
                                        std::to_string(go.k.k[0]) + ")"
                                  : k_setting_name(go.k.k) + k_desc;
}

// Generates: a single prompt streams; a batch prints each text when all are done. Ends with the
// stderr summary line.
void emit(const InferenceModel& m, const std::vector<std::string>& texts, const std::vector<std::vector<int>>& prompts,
          const GenerateOptions& go, const std::string& setting) {
  const ModelConfig& mc = m.lm->config();
  const bool stream = prompts.size() == 1;
  if (stream) {
    std::fwrite(texts[0].data(), 1, texts[0].size(), stdout);
    std::fflush(stdout);
  }
  GenerateStats st;
  auto outs = generate(*m.lm, prompts, go,
                       stream ? std::function<void(int, int)>([&m](int, int t) {
                         put_token(t, m.tokenizer.get());
                         std::fflush(stdout);
                       })
                              : std::function<void(int, int)>(),
                       &st);
  if (stream) {
    std::fputc('\n', stdout);
  } else {
    for (size_t i = 0; i < outs.size(); ++i) {
      std::printf("--- %zu ---\n", i + 1);
      std::fwrite(texts[i].data(), 1, texts[i].size(), stdout);
      for (int t : outs[i]) put_token(t, m.tokenizer.get());
      std::fputc('\n', stdout);
    }
  }
  std::fflush(stdout);
  std::fprintf(stderr,
               "generate: %s | %zu prompt%s, %lld prompt tokens at %.0f tok/s | %lld new tokens at %.1f tok/s | "
               "mean K %.2f | active params/token %s of %s | %s%s\n",
               setting.c_str(), prompts.size(), prompts.size() == 1 ? "" : "s", (long long)st.prompt_tokens,
               st.prompt_tps(), (long long)st.generated, st.decode_tps(), st.mean_k,
               human(double(mc.active_params(st.mean_k))).c_str(), human(double(mc.num_params())).c_str(),
               threads_used().c_str(),
               st.slides ? (" | " + std::to_string(st.slides) + " window slides").c_str() : "");
}

// --logits-out: each prompt through the KV decoder in one pass (its own cache slot), every
// position's logits in prompt order.
void write_prompt_logits(const InferenceModel& m, const std::vector<std::vector<int>>& prompts, const InferenceK& k,
                         DecodeWeights w, const std::string& path) {
  KVDecoder dec(*m.lm, 1, 0, w);
  std::string bytes;
  std::vector<double> logits;
  for (const std::vector<int>& p : prompts) {
    dec.reset(0);
    const Segment seg{0, p.data(), int(p.size())};
    dec.forward(std::span<const Segment>(&seg, 1), k, logits, true);
    bytes.append(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(double));
  }
  write_file_atomic(path, bytes);
}

}  // namespace

int generate_command(int argc, char** argv) {
  GenArgs a;
  po::options_description desc(
      "anyk generate (--run-dir DIR | --checkpoint DIR|latest | --weights FILE.h5)\n"
      "              [--prompt TEXT | --prompt-file F | --prompts F] [--max-new N]\n"
      "              [--k K | --layer-k 4,3,2,1 | --budget B --data DIR | --expert-top-p P] [options]\n"
      "Text from a trained model at any K, with a KV cache: the prompt in one batched pass, then\n"
      "one token per step, streamed to stdout (the prompt first). Without a prompt option the prompt\n"
      "is read from stdin. Prompts are encoded with the model's tokenizer (bytes, or the SentencePiece\n"
      "tokenizer.model the run was trained with) and may be at most the model's context (seq_len) long;\n"
      "generation continues past the context by sliding: when the window is full it restarts at its\n"
      "last seq_len/2 tokens (read again in one pass), so no position beyond training is used. Ends\n"
      "with a stderr line: prompt and generation tokens/s, mean K used, active parameters per token");
  CommandOptions cmd("generate", desc);
  add_generate_options(desc, a);
  if (!cmd.parse(argc, argv)) return 0;
  a.has_prompt = cmd.vm().count("prompt") > 0;
  const std::string device_line = check_generate_args(a, cmd.vm());
  const Device dev = parse_device(a.device);
  if (dev != Device::CPU) std::fprintf(stderr, "device: %s\n", device_line.c_str());  // stdout is the text
  InferenceModel m = load_inference_model(a.run_dir, a.checkpoint, a.weights, dev);
  std::vector<std::string> texts;
  std::vector<std::vector<int>> prompts;
  read_prompts(a, m, texts, prompts);
  if (a.budget != 0) check_data_tokenizer(a.data_dir, m.train, "the model " + m.source);
  use_threads(a.threads);  // the thread rule, not the training run's count
  GenerateOptions go;
  const std::string setting = choose_k(a, m, go);
  go.weights = a.decode_weights == "bf16" ? DecodeWeights::bf16 : DecodeWeights::f32;
  announce_threads("generate", stderr);  // stdout is the text
  if (!a.logits_out.empty()) {
    write_prompt_logits(m, prompts, go.k, go.weights, a.logits_out);
    std::fprintf(stderr, "generate: %s | logits of %zu prompt%s -> %s\n", setting.c_str(), prompts.size(),
                 prompts.size() == 1 ? "" : "s", a.logits_out.c_str());
    return 0;
  }
  emit(m, texts, prompts, go, setting);
  return 0;
}

}  // namespace anyk::launch
