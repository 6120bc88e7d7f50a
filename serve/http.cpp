// Routes of anyk serve; see http.h. Each completion is a Call shared by the HTTP worker that
// answers it and the scheduler thread that produces its tokens: the scheduler appends text (cut
// at a stop string) under the Call's lock, the worker waits for it (the whole answer, or each
// piece as a server-sent event).
#include "serve/http.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <random>
#include <sstream>

#include "core/check.h"

namespace anyk::serve {

using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;

// A Prometheus histogram (cumulative buckets, sum, count).
struct Histogram {
  std::vector<double> le;
  std::vector<int64_t> counts;
  double sum = 0;
  int64_t n = 0;
  explicit Histogram(std::vector<double> b) : le(std::move(b)), counts(le.size(), 0) {}
  void add(double v) {
    for (size_t i = 0; i < le.size(); ++i)
      if (v <= le[i]) ++counts[i];
    sum += v;
    ++n;
  }
  void write(std::ostringstream& o, const std::string& name, const std::string& help) const {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
    for (size_t i = 0; i < le.size(); ++i) o << name << "_bucket{le=\"" << le[i] << "\"} " << counts[i] << "\n";
    o << name << "_bucket{le=\"+Inf\"} " << n << "\n" << name << "_sum " << sum << "\n" << name << "_count " << n << "\n";
  }
};

// One completion in flight.
struct Call {
  std::mutex mu;
  std::condition_variable cv;
  std::string text;       // generated so far, cut at a stop string
  size_t sent = 0;        // bytes of text already streamed
  bool done = false;
  bool cancelled = false;  // the client went away: the scheduler stops the request
  Outcome out;
  Clock::time_point t0 = Clock::now(), first{};
};

void write_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump(e.body()), "application/json");
}

}  // namespace

struct Server::Impl {
  Scheduler& sched;
  ModelConfig mc;
  TextCodec codec;
  ServerOptions o;
  httplib::Server svr;
  std::atomic<int64_t> next_id{1};
  int listen_fd = -1;  // the listening socket, seen through the socket-options hook
  std::mutex mu;  // the counters below
  std::map<int, int64_t> by_status;
  int64_t routed = 0, token_layers = 0;
  Histogram latency{{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}};
  Histogram ttft{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}};
  std::mt19937_64 seeds{std::random_device{}()};

  Impl(Scheduler& s, const ModelConfig& m, TextCodec c, const ServerOptions& opt)
      : sched(s), mc(m), codec(std::move(c)), o(opt) {}
  void routes();
  void count(int status) {
    std::lock_guard<std::mutex> lk(mu);
    ++by_status[status];
  }
  void completions(const httplib::Request& req, httplib::Response& res);
  Request make_request(const CompletionRequest& cr, std::vector<int> prompt, int max_tokens,
                       const std::shared_ptr<Call>& call);
  json usage(const Outcome& out, int prompt_tokens, bool auto_k) const;
  json chunk(const std::string& id, int64_t created, const std::string& text, const char* finish) const;
  void stream(httplib::Response& res, std::shared_ptr<Call> call, const CompletionRequest& cr, int prompt_tokens);
  std::string metrics();
  void record(const Call& c) {
    std::lock_guard<std::mutex> lk(mu);
    latency.add(std::chrono::duration<double>(Clock::now() - c.t0).count());
    if (c.first != Clock::time_point{}) ttft.add(std::chrono::duration<double>(c.first - c.t0).count());
    for (int64_t r : c.out.routed) routed += r;
    token_layers += c.out.rows * int64_t(c.out.routed.size());
  }
};

Server::Server(Scheduler& sched, const ModelConfig& mc, TextCodec codec, const ServerOptions& o)
    : impl_(std::make_unique<Impl>(sched, mc, std::move(codec), o)) {
  impl_->routes();
}

Server::~Server() = default;

int Server::bind() {
  Impl& m = *impl_;
  const int port = m.o.port == 0 ? m.svr.bind_to_any_port(m.o.host) : (m.svr.bind_to_port(m.o.host, m.o.port) ? m.o.port : -1);
  if (port > 0 && m.listen_fd >= 0) ::listen(m.listen_fd, SOMAXCONN);
  ANYK_CHECK(port > 0, "cannot listen on " << m.o.host << ":" << m.o.port
                                           << " hint: the port is in use or the host is not an address of this "
                                              "machine; pick another --port (0: any free port)");
  return port;
}

void Server::run() { impl_->svr.listen_after_bind(); }
void Server::stop() { impl_->svr.stop(); }

void Server::Impl::routes() {
  const int threads = o.threads > 0 ? o.threads : sched.options().slots + sched.options().max_queue + 4;
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  svr.set_payload_max_length(o.max_body);
  // Clients keep their connection for many requests: each reconnection goes through a listen
  // backlog of 5 (fixed in the library), where a burst of reconnecting clients loses SYNs and
  // waits a second for the retransmission.
  svr.set_keep_alive_max_count(1000);
  // The library listens with a backlog of 5: a burst of clients connecting at once loses SYNs (a
  // second's wait, and on a loaded machine failed requests). The hook sees the socket before its
  // bind (httplib's default options, less SO_REUSEPORT: a second server on the port must fail to
  // bind); bind() then listens again with a deep backlog.
  svr.set_socket_options([this](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd = sock;
  });
  svr.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) { completions(q, r); });
  svr.Get("/v1/models", [this](const httplib::Request&, httplib::Response& r) {
    json m = {{"id", o.limits.model}, {"object", "model"}, {"created", 0}, {"owned_by", "anyk"},
              {"max_model_len", o.limits.context}, {"experts", mc.experts}, {"layers", mc.layers},
              {"default_k", o.limits.default_k}, {"auto_k", o.limits.auto_k}};
    r.set_content(dump(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
  });
  svr.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
    const bool stopping = sched.draining();
    r.status = stopping ? 503 : 200;
    r.set_content(dump(json{{"status", stopping ? "stopping" : "ok"}}), "application/json");
  });
  svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
    r.set_content(metrics(), "text/plain; version=0.0.4");
  });
  svr.set_error_handler([this](const httplib::Request&, httplib::Response& r) {
    if (!r.body.empty()) return;
    const int s = r.status;
    const std::string msg = s == 404 ? "no such route: the routes are POST /v1/completions, GET /v1/models, "
                                       "/health, /metrics"
                          : s == 413 ? "the request body is larger than --max-body-bytes " + std::to_string(o.max_body)
                                     : std::string("HTTP ") + std::to_string(s);
    write_error(r, ApiError(s, msg));
    r.status = s;
    count(s);
  });
  svr.set_exception_handler([this](const httplib::Request&, httplib::Response& r, std::exception_ptr ep) {
    std::string msg = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      msg = e.what();
    } catch (...) {
    }
    write_error(r, ApiError(500, msg, "", "server_error"));
    count(500);
  });
}

Request Server::Impl::make_request(const CompletionRequest& cr, std::vector<int> prompt, int max_tokens,
                                   const std::shared_ptr<Call>& call) {
  Request rq;
  rq.prompt = std::move(prompt);
  rq.auto_k = cr.auto_k;
  rq.k = InferenceK{request_layer_k(cr, mc, o.limits), cr.expert_top_p};
  uint64_t seed;
  {
    std::lock_guard<std::mutex> lk(mu);
    seed = cr.seed ? *cr.seed : seeds();
  }
  rq.sample = SampleOptions{cr.temperature, cr.top_k, seed, cr.top_p};
  rq.max_tokens = max_tokens;
  const std::vector<std::string> stop = cr.stop;
  rq.on_token = [this, call, stop](int t) {
    std::lock_guard<std::mutex> lk(call->mu);
    if (call->first == Clock::time_point{}) call->first = Clock::now();
    const size_t before = call->text.size();
    call->text += codec.token_text(t);
    const size_t at = stop.empty() ? std::string::npos : find_stop(call->text, stop, before);
    if (at != std::string::npos) call->text.resize(at);
    call->cv.notify_all();
    return at == std::string::npos && !call->cancelled;
  };
  rq.on_done = [call](const Outcome& out) {
    std::lock_guard<std::mutex> lk(call->mu);
    call->out = out;
    call->done = true;
    call->cv.notify_all();
  };
  return rq;
}

json Server::Impl::usage(const Outcome& out, int prompt_tokens, bool auto_k) const {
  const int completion = int(out.tokens.size());
  const double k = out.mean_k();
  return json{{"prompt_tokens", prompt_tokens},
              {"completion_tokens", completion},
              {"total_tokens", prompt_tokens + completion},
              {"k_mean", k},
              {"k_per_layer", out.k_per_layer()},
              {"k_auto", auto_k},
              {"active_params_per_token", mc.active_params(k)},
              {"total_params", mc.num_params()}};
}

json Server::Impl::chunk(const std::string& id, int64_t created, const std::string& text, const char* finish) const {
  json c = {{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  if (finish) c["finish_reason"] = finish;
  return json{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", o.limits.model},
              {"choices", json::array({c})}};
}

void Server::Impl::completions(const httplib::Request& req, httplib::Response& res) {
  CompletionRequest cr;
  std::vector<int> prompt;
  int max_tokens = 0;
  try {
    cr = parse_completion(req.body, mc, o.limits);
    try {
      prompt = codec.encode(cr.prompt);
    } catch (const std::exception& e) {
      throw ApiError(400, std::string("'prompt': ") + e.what(), "prompt");
    }
    if (prompt.empty()) throw ApiError(400, "'prompt' encodes to no tokens", "prompt");
    max_tokens = resolve_max_tokens(cr, int(prompt.size()), o.limits);
  } catch (const ApiError& e) {
    write_error(res, e);
    count(e.status);
    return;
  }
  auto call = std::make_shared<Call>();
  const int prompt_tokens = int(prompt.size());
  const Scheduler::Admit a = sched.submit(make_request(cr, std::move(prompt), max_tokens, call));
  if (a != Scheduler::Admit::Ok) {
    const bool full = a == Scheduler::Admit::QueueFull;
    res.set_header("Retry-After", "1");
    write_error(res, ApiError(full ? 429 : 503,
                              full ? "the server is at its limit of running and queued requests; retry later"
                                   : "the server is shutting down",
                              "", full ? "rate_limit_error" : "server_error"));
    count(res.status);
    return;
  }
  if (cr.stream) return stream(res, call, cr, prompt_tokens);
  std::unique_lock<std::mutex> lk(call->mu);
  call->cv.wait(lk, [&] { return call->done; });
  if (call->out.finish_reason == "error") {
    write_error(res, ApiError(500, "generation failed: " + call->out.error, "", "server_error"));
    count(500);
    return;
  }
  const std::string id = "cmpl-" + std::to_string(next_id++);
  json body = chunk(id, int64_t(std::time(nullptr)), call->text, call->out.finish_reason.c_str());
  body["usage"] = usage(call->out, prompt_tokens, cr.auto_k);
  res.set_content(dump(body), "application/json");
  record(*call);
  count(200);
}

// Server-sent events: a chunk per piece of text as it comes (held back while it may still become
// a stop string or ends inside a UTF-8 character), then the chunk with finish_reason and usage,
// then [DONE]. A client that goes away cancels the request.
void Server::Impl::stream(httplib::Response& res, std::shared_ptr<Call> call, const CompletionRequest& cr,
                          int prompt_tokens) {
  const std::string id = "cmpl-" + std::to_string(next_id++);
  const int64_t created = int64_t(std::time(nullptr));
  const std::vector<std::string> stop = cr.stop;
  const bool auto_k = cr.auto_k;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, call, id, created, stop, auto_k, prompt_tokens](size_t, httplib::DataSink& sink) {
        std::unique_lock<std::mutex> lk(call->mu);
        call->cv.wait(lk, [&] { return call->done || call->text.size() > call->sent; });
        size_t end = call->text.size();
        if (!call->done) end -= std::max(stop_holdback(call->text, stop), incomplete_utf8_tail(call->text));
        std::string events;
        if (end > call->sent) {
          events += "data: " + dump(chunk(id, created, call->text.substr(call->sent, end - call->sent), nullptr)) + "\n\n";
          call->sent = end;
        }
        if (call->done) {
          json last = chunk(id, created, "", call->out.finish_reason.c_str());
          last["usage"] = usage(call->out, prompt_tokens, auto_k);
          events += "data: " + dump(last) + "\n\ndata: [DONE]\n\n";
        }
        if (!events.empty() && !sink.write(events.data(), events.size())) return false;
        if (call->done) {
          lk.unlock();
          record(*call);
          count(200);
          sink.done();
        }
        return true;
      },
      [call](bool) {
        std::lock_guard<std::mutex> lk(call->mu);
        call->cancelled = true;
      });
}

std::string Server::Impl::metrics() {
  const SchedulerStats s = sched.stats();
  std::ostringstream o;
  auto gauge = [&](const char* name, const char* help, const char* type, double v) {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n" << name << " " << v << "\n";
  };
  std::lock_guard<std::mutex> lk(mu);
  o << "# HELP anyk_requests_total Completion requests answered, by HTTP status.\n# TYPE anyk_requests_total counter\n";
  for (const auto& [code, n] : by_status) o << "anyk_requests_total{code=\"" << code << "\"} " << n << "\n";
  gauge("anyk_prompt_tokens_total", "Prompt tokens prefilled.", "counter", double(s.prompt_tokens));
  gauge("anyk_generation_tokens_total", "Tokens generated.", "counter", double(s.generated));
  gauge("anyk_decode_steps_total", "Decode steps (one token for every running request).", "counter", double(s.steps));
  gauge("anyk_queue_length", "Requests waiting for a slot.", "gauge", s.queued);
  gauge("anyk_batch_size", "Requests in the decode batch.", "gauge", s.running);
  gauge("anyk_routed_experts_total", "Experts routed over every finished request's tokens and layers.", "counter",
        double(routed));
  gauge("anyk_token_layers_total", "Token-layer rows of finished requests (routed / this = mean K used).", "counter",
        double(token_layers));
  gauge("anyk_k_used_mean", "Mean K used over finished requests (routed experts per token per layer).", "gauge",
        token_layers ? double(routed) / double(token_layers) : 0.0);
  gauge("anyk_auto_k", "K given to k=auto requests at the last step that had any (0: none yet).", "gauge",
        s.last_auto_k);
  gauge("anyk_auto_k_mean", "Mean K given to k=auto requests over their steps.", "gauge",
        s.auto_k_steps ? double(s.auto_k_sum) / double(s.auto_k_steps) : 0.0);
  gauge("anyk_last_step_ms", "Wall time of the last decode step (ms).", "gauge", s.last_step_ms);
  o << "# HELP anyk_step_cost_ms Fitted decode step cost: fixed + per_routed_row*R + per_expert_read*U (ms).\n"
    << "# TYPE anyk_step_cost_ms gauge\nanyk_step_cost_ms{term=\"fixed\"} " << s.cost[0]
    << "\nanyk_step_cost_ms{term=\"per_routed_row\"} " << s.cost[1] << "\nanyk_step_cost_ms{term=\"per_expert_read\"} "
    << s.cost[2] << "\n";
  o << "# HELP anyk_step_ms Decode step wall time (ms).\n# TYPE anyk_step_ms histogram\n";
  for (size_t i = 0; i < s.step_ms_buckets.size(); ++i)
    o << "anyk_step_ms_bucket{le=\"" << s.step_ms_buckets[i] << "\"} " << s.step_ms_counts[i] << "\n";
  o << "anyk_step_ms_bucket{le=\"+Inf\"} " << s.steps << "\nanyk_step_ms_sum " << s.step_ms_sum
    << "\nanyk_step_ms_count " << s.steps << "\n";
  latency.write(o, "anyk_request_duration_seconds", "Completion requests from arrival to the last token.");
  ttft.write(o, "anyk_time_to_first_token_seconds", "From arrival to the first generated token.");
  return o.str();
}

}  // namespace anyk::serve
