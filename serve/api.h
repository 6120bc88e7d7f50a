// The OpenAI-shaped request and response bodies of anyk serve (POST /v1/completions), checked
// field by field: a body that is not JSON, a field of the wrong type, a value out of range or an
// unsupported option becomes an ApiError (HTTP status and an OpenAI-style error object), never a
// crash. anyk's fields: k (an integer in [1, E] or "auto"), layer_k (one K per layer) and
// expert_top_p (per-token K by router mass, under k). See docs/serve.md.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/config.h"

namespace anyk::serve {

struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int status, const std::string& message, const std::string& param = "",
           const std::string& type = "invalid_request_error", const std::string& code = "")
      : std::runtime_error(message), status(status), type(type), param(param), code(code) {}
  nlohmann::json body() const;  // {"error": {"message", "type", "param", "code"}}
};

// Server-side limits and defaults the request is checked against.
struct ApiLimits {
  std::string model;      // the served model's name (a request may name it or leave it out)
  int context = 0;        // tokens per sequence: prompt + max_tokens must fit
  int max_tokens = 0;     // the most a request may ask for (0: the context)
  int default_k = 1;      // K when the request gives none (the trained K)
  bool auto_k = false;    // the server was started with --target-ms-per-token
  int default_max_tokens = 16;
};

struct CompletionRequest {
  std::string prompt;
  std::optional<int> max_tokens;  // unset: min(default, what the context leaves)
  double temperature = 1.0, top_p = 1.0;
  int top_k = 0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false, include_usage = false;
  // K: unset -> default_k everywhere; auto_k; k; layer_k; with expert_top_p a cap.
  std::optional<int> k;
  bool auto_k = false;
  std::vector<int> layer_k;
  double expert_top_p = 0;
};

// Parses and checks a /v1/completions body (throws ApiError).
CompletionRequest parse_completion(const std::string& body, const ModelConfig& mc, const ApiLimits& lim);

// The per-layer K of a parsed request (layer_k, k, or the default; the cap under expert_top_p).
std::vector<int> request_layer_k(const CompletionRequest& r, const ModelConfig& mc, const ApiLimits& lim);

// max_tokens for a prompt of n tokens, checked against the context (throws ApiError 400).
int resolve_max_tokens(const CompletionRequest& r, int prompt_tokens, const ApiLimits& lim);

// Text that may still turn into a stop string: how many bytes at the end of text to hold back
// while streaming, and where the first stop string starts (npos: none).
size_t stop_holdback(const std::string& text, const std::vector<std::string>& stop);
size_t find_stop(const std::string& text, const std::vector<std::string>& stop, size_t from);

// JSON text of j, invalid UTF-8 (a byte model's raw bytes, a token cut inside a character)
// replaced by U+FFFD.
std::string dump(const nlohmann::json& j);
// Bytes at the end of s that start an incomplete UTF-8 character (0-3), held back when streaming.
size_t incomplete_utf8_tail(const std::string& s);

}  // namespace anyk::serve
