// Request checking and JSON helpers of anyk serve; see api.h.
#include "serve/api.h"

#include <algorithm>
#include <cmath>

namespace anyk::serve {

using nlohmann::json;

json ApiError::body() const {
  json e = {{"message", what()}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return json{{"error", e}};
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg) { throw ApiError(400, msg, param); }

std::string type_name(const json& v) { return v.type_name(); }

// The field's value when present and not null.
const json* field(const json& b, const char* name) {
  auto it = b.find(name);
  if (it == b.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const json& b, const char* name, double def, double lo, double hi, bool lo_open = false) {
  const json* v = field(b, name);
  if (!v) return def;
  if (!v->is_number()) bad(name, std::string("'") + name + "' must be a number, got " + type_name(*v));
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
    bad(name, std::string("'") + name + "' = " + v->dump() + " is outside " + (lo_open ? "(" : "[") +
                  json(lo).dump() + ", " + json(hi).dump() + "]");
  return x;
}

std::optional<int64_t> integer(const json& b, const char* name, int64_t lo, int64_t hi) {
  const json* v = field(b, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) bad(name, std::string("'") + name + "' must be an integer, got " + type_name(*v));
  const int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX : v->get<int64_t>();
  if (x < lo || x > hi)
    bad(name, std::string("'") + name + "' = " + v->dump() + " is outside [" + std::to_string(lo) + ", " +
                  std::to_string(hi) + "]");
  return x;
}

bool boolean(const json& b, const char* name, bool def) {
  const json* v = field(b, name);
  if (!v) return def;
  if (!v->is_boolean()) bad(name, std::string("'") + name + "' must be true or false, got " + type_name(*v));
  return v->get<bool>();
}

std::string prompt_of(const json& b) {
  const json* v = field(b, "prompt");
  if (!v) bad("prompt", "'prompt' is required");
  if (v->is_array() && v->size() == 1 && (*v)[0].is_string()) v = &(*v)[0];
  if (!v->is_string())
    bad("prompt", "'prompt' must be a string (or an array of one string), got " + type_name(*v) +
                      (v->is_array() ? " of " + std::to_string(v->size()) + " elements" : ""));
  std::string p = v->get<std::string>();
  if (p.empty()) bad("prompt", "'prompt' is empty: give at least one character");
  return p;
}

std::vector<std::string> stop_of(const json& b) {
  const json* v = field(b, "stop");
  std::vector<std::string> out;
  if (!v) return out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array() && v->size() <= 4) {
    for (const json& s : *v) {
      if (!s.is_string()) bad("stop", "'stop' must hold strings, got " + type_name(s));
      out.push_back(s.get<std::string>());
    }
  } else {
    bad("stop", "'stop' must be a string or an array of at most 4 strings");
  }
  for (const auto& s : out)
    if (s.empty()) bad("stop", "'stop' strings must not be empty");
  return out;
}

// Options this server does not implement: refused unless left at their neutral value.
void unsupported(const json& b) {
  if (auto n = integer(b, "n", 1, 1 << 20); n && *n != 1) bad("n", "'n' must be 1: one completion per request");
  if (auto n = integer(b, "best_of", 1, 1 << 20); n && *n != 1) bad("best_of", "'best_of' must be 1");
  if (boolean(b, "echo", false)) bad("echo", "'echo' is not supported");
  if (field(b, "logprobs")) bad("logprobs", "'logprobs' is not supported");
  if (field(b, "suffix")) bad("suffix", "'suffix' is not supported");
  for (const char* pen : {"presence_penalty", "frequency_penalty"})
    if (number(b, pen, 0, -2, 2) != 0) bad(pen, std::string("'") + pen + "' is not supported (only 0)");
  if (const json* lb = field(b, "logit_bias"); lb && !(lb->is_object() && lb->empty()))
    bad("logit_bias", "'logit_bias' is not supported");
  if (const json* u = field(b, "user"); u && !u->is_string()) bad("user", "'user' must be a string");
}

void k_fields(const json& b, const ModelConfig& mc, const ApiLimits& lim, CompletionRequest& r) {
  const int E = mc.experts, L = mc.layers;
  if (const json* v = field(b, "k")) {
    if (v->is_string() && v->get<std::string>() == "auto") {
      if (!lim.auto_k)
        bad("k", "'k': \"auto\" needs a server started with --target-ms-per-token; give an integer K in [1, " +
                     std::to_string(E) + "]");
      r.auto_k = true;
    } else {
      r.k = int(*integer(b, "k", 1, E));
    }
  }
  if (const json* v = field(b, "layer_k")) {
    if (r.k || r.auto_k) bad("layer_k", "give 'k' or 'layer_k', not both");
    if (!v->is_array() || int(v->size()) != L)
      bad("layer_k", "'layer_k' must be an array of " + std::to_string(L) + " integers (one K per layer)");
    for (const json& x : *v) {
      if (!x.is_number_integer() || x.get<int64_t>() < 1 || x.get<int64_t>() > E)
        bad("layer_k", "'layer_k' value " + x.dump() + " is not an integer in [1, " + std::to_string(E) + "]");
      r.layer_k.push_back(int(x.get<int64_t>()));
    }
  }
  r.expert_top_p = number(b, "expert_top_p", 0, 0, 1, true);
  if (r.expert_top_p > 0 && r.auto_k) bad("expert_top_p", "'expert_top_p' cannot be combined with k \"auto\"");
}

}  // namespace

CompletionRequest parse_completion(const std::string& body, const ModelConfig& mc, const ApiLimits& lim) {
  json b = json::parse(body, nullptr, false);
  if (b.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
  if (!b.is_object()) throw ApiError(400, "the request body must be a JSON object, got " + type_name(b));
  if (const json* m = field(b, "model")) {
    if (!m->is_string()) bad("model", "'model' must be a string, got " + type_name(*m));
    if (m->get<std::string>() != lim.model)
      throw ApiError(404, "the model '" + m->get<std::string>() + "' does not exist; this server serves '" +
                              lim.model + "'", "model", "invalid_request_error", "model_not_found");
  }
  CompletionRequest r;
  r.prompt = prompt_of(b);
  const int max_cap = lim.max_tokens > 0 ? lim.max_tokens : lim.context;
  if (auto m = integer(b, "max_tokens", 1, max_cap)) r.max_tokens = int(*m);
  r.temperature = number(b, "temperature", 1.0, 0, 2);
  r.top_p = number(b, "top_p", 1.0, 0, 1, true);
  r.top_k = int(integer(b, "top_k", -1, mc.vocab).value_or(0));
  if (r.top_k < 0) r.top_k = 0;
  if (auto s = integer(b, "seed", INT64_MIN, INT64_MAX)) r.seed = uint64_t(*s);
  r.stop = stop_of(b);
  r.stream = boolean(b, "stream", false);
  if (const json* so = field(b, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object");
    r.include_usage = boolean(*so, "include_usage", false);
  }
  unsupported(b);
  k_fields(b, mc, lim, r);
  return r;
}

std::vector<int> request_layer_k(const CompletionRequest& r, const ModelConfig& mc, const ApiLimits& lim) {
  if (!r.layer_k.empty()) return r.layer_k;
  int K = r.k ? *r.k : (r.expert_top_p > 0 ? mc.experts : lim.default_k);
  return std::vector<int>(size_t(mc.layers), K);
}

int resolve_max_tokens(const CompletionRequest& r, int prompt_tokens, const ApiLimits& lim) {
  const int room = lim.context - prompt_tokens;
  if (room < 1)
    throw ApiError(400, "the prompt is " + std::to_string(prompt_tokens) + " tokens; this model's context is " +
                            std::to_string(lim.context) + " tokens, which leaves no room for a completion",
                   "prompt");
  if (!r.max_tokens) return std::min(lim.default_max_tokens, room);
  if (*r.max_tokens > room)
    throw ApiError(400, "this model's maximum context length is " + std::to_string(lim.context) +
                            " tokens; the request asks for " + std::to_string(prompt_tokens + *r.max_tokens) +
                            " (" + std::to_string(prompt_tokens) + " in the prompt, " +
                            std::to_string(*r.max_tokens) + " in the completion): lower max_tokens",
                   "max_tokens");
  return *r.max_tokens;
}

size_t find_stop(const std::string& text, const std::vector<std::string>& stop, size_t from) {
  size_t best = std::string::npos;
  for (const auto& s : stop) {
    const size_t start = from >= s.size() ? from - s.size() + 1 : 0;
    best = std::min(best, text.find(s, start));
  }
  return best;
}

size_t stop_holdback(const std::string& text, const std::vector<std::string>& stop) {
  size_t hold = 0;
  for (const auto& s : stop)
    for (size_t n = std::min(s.size() - 1, text.size()); n > hold; --n)
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
  return hold;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

size_t incomplete_utf8_tail(const std::string& s) {
  // Walk back over continuation bytes (at most 3) to a lead byte; incomplete if it wants more.
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(4, n); ++back) {
    const unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation
    const size_t want = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return want > back ? back : 0;
  }
  return 0;
}

}  // namespace anyk::serve
