// `anyk serve`: loads a model like `anyk generate` and answers OpenAI-shaped completions over HTTP
// (serve/http.h), every request at its own K in one continuously batched decode (serve/scheduler.h).
// SIGTERM, SIGINT and SIGHUP stop accepting, finish the requests already accepted and exit 0.
#include "launch/serve.h"

#include <omp.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include "core/check.h"
#include "launch/generate.h"
#include "launch/options.h"
#include "serve/http.h"
#include "serve/scheduler.h"

namespace anyk::launch {

namespace {

struct ServeArgs {
  std::string run_dir, checkpoint, weights, host = "127.0.0.1", model_name;
  int port = 8080, slots = 8, max_queue = 32, max_tokens = 0, threads = 0, http_threads = 0, k_min = 1, k_max = 0;
  int64_t max_body = 1 << 20;
  double target_ms = 0, batch_wait_ms = 0;
};

void add_serve_options(po::options_description& desc, ServeArgs& a) {
  desc.add_options()("run-dir", po::value(&a.run_dir), "run directory holding config.ini and model.h5")(
      "checkpoint", po::value(&a.checkpoint), "a checkpoint: its step directory, a `latest` file, or `latest`")(
      "weights", po::value(&a.weights), "a weights file or a Mixtral directory (anyk convert --to hf)")(
      "host", po::value(&a.host)->default_value(a.host),
      "address to listen on (default loopback only; 0.0.0.0 exposes the server to the network)")(
      "port", po::value(&a.port)->default_value(a.port), "TCP port (0: any free port, printed at start)")(
      "model-name", po::value(&a.model_name), "the model id of /v1/models and responses (default: the source's name)")(
      "slots", po::value(&a.slots)->default_value(a.slots), "requests decoded together at most (the batch)")(
      "max-queue", po::value(&a.max_queue)->default_value(a.max_queue),
      "requests waiting for a slot at most; beyond it requests get 429 with Retry-After")(
      "max-tokens", po::value(&a.max_tokens)->default_value(0),
      "the largest max_tokens a request may ask for (0: the model's context)")(
      "max-body-bytes", po::value(&a.max_body)->default_value(a.max_body), "largest request body (413 beyond)")(
      "target-ms-per-token", po::value(&a.target_ms)->default_value(0),
      "enables k \"auto\": the largest K in [k-min, k-max] whose predicted decode step stays under this many ms")(
      "k-min", po::value(&a.k_min)->default_value(1), "smallest K auto may choose")(
      "k-max", po::value(&a.k_max)->default_value(0), "largest K auto may choose (0: the model's experts)")(
      "batch-wait-ms", po::value(&a.batch_wait_ms)->default_value(0),
      "when idle, how long a first request waits for others to start with it in one batch (0: none)")(
      "threads", po::value(&a.threads)->default_value(0), "OpenMP threads of the model (0: all available)")(
      "http-threads", po::value(&a.http_threads)->default_value(0),
      "HTTP worker threads (0: slots + max-queue + 4)");
}

serve::TextCodec make_codec(const InferenceModel& m) {
  const int V = m.lm->config().vocab;
  std::shared_ptr<const data::SpTokenizer> sp = m.tokenizer;
  serve::TextCodec c;
  c.encode = [sp, V](const std::string& text) {
    std::vector<int> t;
    if (sp) t = sp->encode(text);
    else
      for (unsigned char ch : text) t.push_back(int(ch));
    for (int id : t)
      if (id >= V)
        throw std::runtime_error((sp ? "token id " : "byte ") + std::to_string(id) + " is outside the model's vocab of " +
                                 std::to_string(V) + (sp ? "" : " (prompts are read as bytes)"));
    return t;
  };
  c.token_text = [sp](int t) { return sp ? sp->token_text(t) : std::string(1, t < 256 ? char(t) : '?'); };
  return c;
}

int trained_k(const InferenceModel& m) {
  const int E = m.lm->config().experts;
  int k = m.train.k_strategy == "fixed" || m.train.k_strategy == "emoe" ? m.train.k : m.train.k_max;
  return std::max(1, std::min(k, E));
}

void check_serve_args(const ServeArgs& a) {
  ANYK_CHECK(a.port >= 0 && a.port <= 65535, "--port " << a.port << " is outside [0, 65535]");
  ANYK_CHECK(a.slots >= 1 && a.slots <= 1024, "--slots " << a.slots << " must be in [1, 1024]");
  ANYK_CHECK(a.max_queue >= 0, "--max-queue " << a.max_queue << " must be >= 0");
  ANYK_CHECK(a.max_tokens >= 0, "--max-tokens " << a.max_tokens << " must be >= 0 (0: the context)");
  ANYK_CHECK(a.max_body >= 1024, "--max-body-bytes " << a.max_body << " must be >= 1024");
  ANYK_CHECK(a.threads >= 0 && a.http_threads >= 0, "--threads and --http-threads must be >= 0");
  ANYK_CHECK(a.batch_wait_ms >= 0 && a.batch_wait_ms <= 60000, "--batch-wait-ms " << a.batch_wait_ms
                                                                                 << " must be in [0, 60000]");
  ANYK_CHECK(a.target_ms >= 0, "--target-ms-per-token " << a.target_ms << " must be >= 0 (0: no auto K)");
}

}  // namespace

int serve_command(int argc, char** argv) {
  ServeArgs a;
  po::options_description desc(
      "anyk serve (--run-dir DIR | --checkpoint DIR|latest | --weights FILE.h5) [--host 127.0.0.1] [--port 8080]\n"
      "An OpenAI-compatible completions server (POST /v1/completions, GET /v1/models, /health,\n"
      "/metrics) where every request picks its K (fields k, layer_k, expert_top_p, or k \"auto\" with\n"
      "--target-ms-per-token); requests at different K share one continuously batched decode.\n"
      "SIGTERM stops accepting, finishes the accepted requests and exits 0. See docs/serve.md");
  CommandOptions cmd("serve", desc);
  add_serve_options(desc, a);
  if (!cmd.parse(argc, argv)) return 0;
  check_serve_args(a);
  InferenceModel m = load_inference_model(a.run_dir, a.checkpoint, a.weights, Device::CPU);
  const ModelConfig& mc = m.lm->config();
  const int threads = a.threads > 0 ? a.threads : m.train.threads;
  omp_set_num_threads(threads);
  ANYK_CHECK(a.max_tokens <= mc.seq_len, "--max-tokens " << a.max_tokens << " exceeds the model's context "
                                                         << mc.seq_len);
  // The signals go to one thread that waits for them: blocked here, before any thread starts.
  sigset_t stop_set;
  sigemptyset(&stop_set);
  for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&stop_set, s);
  pthread_sigmask(SIG_BLOCK, &stop_set, nullptr);
  serve::SchedulerOptions so;
  so.slots = a.slots, so.max_queue = a.max_queue, so.target_ms = a.target_ms, so.k_min = a.k_min, so.k_max = a.k_max;
  so.batch_wait_ms = a.batch_wait_ms;
  so.threads = threads;
  serve::Scheduler sched(*m.lm, so);
  serve::ServerOptions o;
  o.host = a.host, o.port = a.port, o.max_body = size_t(a.max_body), o.threads = a.http_threads;
  o.limits.model = a.model_name.empty() ? std::filesystem::path(m.source).filename().string() : a.model_name;
  if (o.limits.model.empty()) o.limits.model = "anyk";
  o.limits.context = sched.options().capacity;
  o.limits.max_tokens = a.max_tokens;
  o.limits.default_k = trained_k(m);
  o.limits.auto_k = a.target_ms > 0;
  serve::Server server(sched, mc, make_codec(m), o);
  const int port = server.bind();
  std::printf("serve: listening on http://%s:%d | model %s, %d layers, %d experts, context %d | %d slots, queue %d, "
              "default K %d%s\n",
              a.host.c_str(), port, o.limits.model.c_str(), mc.layers, mc.experts, o.limits.context, a.slots,
              a.max_queue, o.limits.default_k,
              a.target_ms > 0 ? (" | auto K in [" + std::to_string(sched.options().k_min) + ", " +
                                 std::to_string(sched.options().k_max) + "] for " + std::to_string(a.target_ms) +
                                 " ms/token").c_str()
                              : "");
  std::fflush(stdout);
  std::atomic<bool> signalled{false};
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_set, &sig);
    signalled = true;
    std::printf("serve: caught %s: no new requests; finishing the accepted ones\n", strsignal(sig));
    std::fflush(stdout);
    sched.stop_accepting();
    server.stop();
  });
  server.run();
  if (!signalled) pthread_kill(waiter.native_handle(), SIGTERM);  // run() ended on its own: end the waiter
  waiter.join();
  sched.drain();
  std::printf("serve: stopped\n");
  std::fflush(stdout);
  return 0;
}

}  // namespace anyk::launch
