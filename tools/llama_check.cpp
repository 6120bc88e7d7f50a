// The llama.cpp side of tools/llama_test.sh: loads an anyk GGUF export with the real llama.cpp
// (libllama from node-llama-cpp), compiled against that llama.cpp's llama.h. Two modes:
//
//   llama_check MODEL.gguf logits PROMPTS REF [--k K] [--kv f32|f16] [--fa off|on|auto] [--tol T]
//     tokenizes each line of PROMPTS with llama.cpp's tokenizer (must give the bytes of the line,
//     anyk's ids), evaluates it in one batch with logits at every position, and compares them with
//     REF (anyk generate --logits-out: float64, prompt after prompt, V per position). Prints the
//     max |difference| and the positions whose argmax differs; exit 1 when the max exceeds T or
//     any argmax differs (T < 0: report only).
//   llama_check MODEL.gguf generate PROMPTS N [--k K] [--kv f32|f16] [--fa off|on|auto]
//     greedy generation of N tokens after each prompt with llama.cpp's greedy sampler, printed as
//     `anyk generate --prompts` prints (--- i ---, then prompt and continuation, each new token
//     detokenized by llama.cpp).
//
//   llama_check MODEL.gguf tokenize LINES -|IDS
//     each line's llama.cpp tokens must be its bytes (-) or the ids on the same line of IDS (`anyk
//     tokenize` with a SentencePiece model), and llama.cpp's detokenizer must return the line.
//
// --ids IDS (logits, and tokenize's second form): anyk's ids of every line of PROMPTS, one line of
// space-separated ids each; llama.cpp's tokens must be those instead of the bytes.
//
// --k K loads the model with llama.cpp's metadata override llama.expert_used_count=int:K (the
// `--override-kv` of llama.cpp's tools). The KV cache is f32 unless --kv f16 (llama.cpp's default),
// and flash attention is off unless --fa on|auto (llama.cpp's default is auto, which turns it on
// for the CPU: its kernel rounds to f16 inside, about 3e-3 on the logits of a small model).
#include <ggml-backend.h>
#include <llama.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "llama_check: %s\n", msg.c_str());
  std::exit(1);
}

void log_cb(ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) std::fputs(text, stderr);
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die("cannot read " + path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

// Text -> anyk's ids (--ids); empty: anyk's ids are the bytes.
std::map<std::string, std::vector<llama_token>> g_ids;

void read_ids(const std::vector<std::string>& lines, const std::string& path) {
  const std::vector<std::string> rows = read_lines(path);
  if (rows.size() != lines.size())
    die(path + " has " + std::to_string(rows.size()) + " lines of ids for " + std::to_string(lines.size()) + " lines");
  for (size_t i = 0; i < rows.size(); ++i) {
    std::istringstream in(rows[i]);
    std::vector<llama_token> ids;
    for (long v; in >> v;) ids.push_back(llama_token(v));
    g_ids[lines[i]] = ids;
  }
}

struct Engine {
  llama_model* model = nullptr;
  llama_context* ctx = nullptr;
  const llama_vocab* vocab = nullptr;
  std::vector<llama_model_kv_override> overrides;

  Engine(const std::string& path, int k, bool f16_kv, llama_flash_attn_type fa) {
    llama_model_params mp = llama_model_default_params();
    if (k > 0) {
      llama_model_kv_override o{};
      o.tag = LLAMA_KV_OVERRIDE_TYPE_INT;
      std::snprintf(o.key, sizeof o.key, "llama.expert_used_count");
      o.val_i64 = k;
      overrides.push_back(o);
      overrides.push_back(llama_model_kv_override{});  // key[0] == 0 ends the list
      mp.kv_overrides = overrides.data();
    }
    model = llama_model_load_from_file(path.c_str(), mp);
    if (!model) die("llama.cpp could not load " + path);
    vocab = llama_model_get_vocab(model);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = uint32_t(llama_model_n_ctx_train(model));
    cp.n_batch = cp.n_ubatch = cp.n_ctx;
    cp.n_seq_max = 1;
    // One thread: on a busy 2-core machine two spinning threads took 16 s for what one does in 0.04 s.
    cp.n_threads = cp.n_threads_batch = 1;
    cp.flash_attn_type = fa;
    cp.type_k = cp.type_v = f16_kv ? GGML_TYPE_F16 : GGML_TYPE_F32;
    ctx = llama_init_from_model(model, cp);
    if (!ctx) die("llama.cpp could not create a context for " + path);
  }
  ~Engine() {
    llama_free(ctx);
    llama_model_free(model);
  }

  // llama.cpp's tokens of text, which must be anyk's: its bytes, or its ids from --ids.
  std::vector<llama_token> tokenize(const std::string& text) const {
    std::vector<llama_token> t(text.size() + 8);
    const int n = llama_tokenize(vocab, text.data(), int32_t(text.size()), t.data(), int32_t(t.size()), false, false);
    if (n < 0) die("llama_tokenize failed on \"" + text + "\"");
    t.resize(size_t(n));
    if (!g_ids.empty()) {
      auto it = g_ids.find(text);
      if (it == g_ids.end()) die("no anyk ids for \"" + text + "\"");
      if (t != it->second) {
        std::string a, l;
        for (llama_token x : it->second) a += " " + std::to_string(x);
        for (llama_token x : t) l += " " + std::to_string(x);
        die("llama.cpp's tokens of \"" + text + "\" are not anyk's: anyk" + a + ", llama.cpp" + l);
      }
      return t;
    }
    bool same = t.size() == text.size();
    for (size_t i = 0; same && i < t.size(); ++i) same = t[i] == llama_token((unsigned char)text[i]);
    if (!same) die("llama.cpp's tokens of \"" + text + "\" are not its bytes (" + std::to_string(n) + " tokens for " +
                   std::to_string(text.size()) + " bytes)");
    return t;
  }

  // Evaluates tokens from position pos on (sequence 0); logits for every token when all, else the last.
  void decode(const std::vector<llama_token>& toks, int pos, bool all) {
    llama_batch b = llama_batch_init(int32_t(toks.size()), 0, 1);
    for (size_t i = 0; i < toks.size(); ++i) {
      b.token[i] = toks[i];
      b.pos[i] = pos + int(i);
      b.n_seq_id[i] = 1;
      b.seq_id[i][0] = 0;
      b.logits[i] = all || i + 1 == toks.size();
    }
    b.n_tokens = int32_t(toks.size());
    const int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    if (rc != 0) die("llama_decode returned " + std::to_string(rc));
  }
};

int argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}
int argmax(const double* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

int run_logits(Engine& e, const std::vector<std::string>& prompts, const std::string& ref_path, double tol) {
  const int V = llama_vocab_n_tokens(e.vocab);
  std::ifstream in(ref_path, std::ios::binary);
  if (!in) die("cannot read " + ref_path);
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t rows = 0;
  for (const std::string& p : prompts) rows += e.tokenize(p).size();
  if (raw.size() != rows * size_t(V) * sizeof(double))
    die(ref_path + " holds " + std::to_string(raw.size()) + " bytes, expected " + std::to_string(rows) +
        " positions x " + std::to_string(V) + " float64");
  const double* ref = reinterpret_cast<const double*>(raw.data());
  double max_diff = 0;
  int argmax_bad = 0;
  size_t row = 0;
  for (const std::string& p : prompts) {
    llama_memory_clear(llama_get_memory(e.ctx), true);
    const std::vector<llama_token> toks = e.tokenize(p);
    e.decode(toks, 0, true);
    for (size_t i = 0; i < toks.size(); ++i, ++row) {
      const float* got = llama_get_logits_ith(e.ctx, int32_t(i));
      const double* want = ref + row * size_t(V);
      for (int v = 0; v < V; ++v) max_diff = std::fmax(max_diff, std::fabs(double(got[v]) - want[v]));
      if (argmax(got, V) != argmax(want, V)) ++argmax_bad;
    }
  }
  std::printf("max_abs_diff %.3e over %zu positions x %d logits; argmax differs at %d positions\n", max_diff, rows, V,
              argmax_bad);
  if (tol >= 0 && (max_diff > tol || argmax_bad > 0)) {
    std::fprintf(stderr, "llama_check: logits differ from anyk's: max |diff| %.3e (tolerance %.1e), %d argmax "
                         "differences\n", max_diff, tol, argmax_bad);
    return 1;
  }
  return 0;
}

// Every line: llama.cpp's tokens are its bytes (Engine::tokenize), and llama.cpp's detokenizer
// gives the line back.
int run_tokenize(Engine& e, const std::vector<std::string>& lines) {
  size_t bytes = 0;
  for (const std::string& text : lines) {
    const std::vector<llama_token> toks = e.tokenize(text);
    std::string back(text.size() * 4 + 16, '\0');
    const int n = llama_detokenize(e.vocab, toks.data(), int32_t(toks.size()), back.data(), int32_t(back.size()),
                                   false, false);
    if (n < 0 || back.substr(0, size_t(n)) != text)
      die("llama.cpp detokenizes the tokens of \"" + text + "\" differently");
    bytes += text.size();
  }
  std::printf("tokenize: %zu lines, %zu bytes: llama.cpp's ids are anyk's (%s), and decode back to the text\n",
              lines.size(), bytes, g_ids.empty() ? "the bytes" : "--ids");
  return 0;
}

int run_generate(Engine& e, const std::vector<std::string>& prompts, int n) {
  llama_sampler* smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
  llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
  for (size_t i = 0; i < prompts.size(); ++i) {
    llama_memory_clear(llama_get_memory(e.ctx), true);
    std::string text = prompts[i];
    std::vector<llama_token> toks = e.tokenize(text);
    int pos = 0;
    for (int step = 0; step < n; ++step) {
      e.decode(toks, pos, false);
      pos += int(toks.size());
      const llama_token t = llama_sampler_sample(smpl, e.ctx, -1);
      char piece[16];
      const int len = llama_token_to_piece(e.vocab, t, piece, sizeof piece, 0, false);
      if (len != 1) die("llama.cpp detokenized token " + std::to_string(t) + " to " + std::to_string(len) + " bytes");
      text += piece[0];
      toks.assign(1, t);
    }
    std::printf("--- %zu ---\n%s\n", i + 1, text.c_str());
  }
  llama_sampler_free(smpl);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) die("usage: llama_check MODEL.gguf logits PROMPTS REF [--k K] [--kv f32|f16] [--fa off|on|auto] "
                    "[--tol T] | llama_check MODEL.gguf generate PROMPTS N [--k K] [--kv f32|f16] [--fa off|on|auto]");
  const std::string model = argv[1], mode = argv[2], prompts_path = argv[3], arg = argv[4];
  int k = 0;
  bool f16_kv = false;
  llama_flash_attn_type fa = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  double tol = 1e-3;
  std::string ids_path = mode == "tokenize" && arg != "-" ? arg : "";
  for (int i = 5; i + 1 < argc; i += 2) {
    const std::string o = argv[i], v = argv[i + 1];
    if (o == "--k") k = std::atoi(v.c_str());
    else if (o == "--ids") ids_path = v;
    else if (o == "--kv") f16_kv = v == "f16";
    else if (o == "--tol") tol = std::atof(v.c_str());
    else if (o == "--fa") fa = v == "on" ? LLAMA_FLASH_ATTN_TYPE_ENABLED : v == "auto" ? LLAMA_FLASH_ATTN_TYPE_AUTO
                                                                          : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    else die("unknown option " + o);
  }
  llama_log_set(log_cb, nullptr);
  const char* libs = std::getenv("LLAMA_BACKEND_DIR");
  if (libs) ggml_backend_load_all_from_path(libs);
  else ggml_backend_load_all();
  llama_backend_init();
  const std::vector<std::string> prompts = read_lines(prompts_path);
  if (!ids_path.empty()) read_ids(prompts, ids_path);
  int rc;
  {
    Engine e(model, k, f16_kv, fa);
    rc = mode == "logits" ? run_logits(e, prompts, arg, tol)
         : mode == "generate" ? run_generate(e, prompts, std::atoi(arg.c_str()))
         : mode == "tokenize" ? run_tokenize(e, prompts)
                              : (die("unknown mode " + mode), 1);
  }
  llama_backend_free();
  return rc;
}
