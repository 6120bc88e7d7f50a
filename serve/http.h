// The HTTP side of anyk serve (Debian's cpp-httplib): POST /v1/completions (JSON or server-sent
// events), GET /v1/models, /health and /metrics (Prometheus text), OpenAI-style error objects for
// every 4xx/5xx, 429/503 with Retry-After when the queue is full or the server is stopping.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "serve/api.h"
#include "serve/scheduler.h"

namespace anyk::serve {

// Text <-> token ids of the served model (bytes or SentencePiece).
struct TextCodec {
  std::function<std::vector<int>(const std::string&)> encode;  // throws for text the vocab cannot hold
  std::function<std::string(int)> token_text;
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;               // 0: any free port (bind() returns it)
  size_t max_body = 1 << 20;     // bytes of a request body
  int threads = 0;               // HTTP worker threads (0: slots + queue + 4)
  ApiLimits limits;
};

class Server {
 public:
  Server(Scheduler& sched, const ModelConfig& mc, TextCodec codec, const ServerOptions& o);
  ~Server();
  int bind();   // binds host:port; returns the port (throws anyk::Error when it cannot)
  void run();   // serves until stop(); returns once the requests in flight have been answered
  void stop();  // stops accepting (safe from another thread)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace anyk::serve
