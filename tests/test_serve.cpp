// `anyk serve` through real HTTP (cpp-httplib's client and curl) against a model saved by the
// test: greedy completions equal `anyk generate --temperature 0` at the same K (k, layer_k,
// expert_top_p); requests at different K sent together (and batched: fewer decode steps than
// tokens) each equal their solo text; streamed (server-sent events) and whole answers are equal;
// k "auto" takes k_max under a generous target and k_min under an impossible one; 25 bad requests
// get 4xx with an OpenAI error object and the server keeps serving; a full queue answers 429
// with Retry-After; SIGTERM finishes the accepted request and exits 0.
#include <doctest/doctest.h>
#include <httplib.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <filesystem>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "io/weights.h"
#include "model/generate.h"
#include "test_util.h"

using namespace anyk;
using namespace anyk::test;
namespace fs = std::filesystem;

namespace {

// Bytes below 128 only: every generated text is ASCII, so JSON carries it byte for byte. big: a
// model whose decode steps take about a millisecond (for requests that stay in flight a while).
ModelConfig model_config(bool big = false) {
  ModelConfig c;
  if (big) {
    c.vocab = 128, c.dim = 128, c.layers = 2, c.heads = 4, c.experts = 8, c.expert_hidden = 512, c.seq_len = 512;
    c.init_std = 0.05, c.dtype = DType::F32;
    return c;
  }
  c.vocab = 128;
  c.dim = 32;
  c.layers = 2;
  c.heads = 4;
  c.experts = 4;
  c.expert_hidden = 24;
  c.seq_len = 256;
  c.init_std = 0.15;
  c.dtype = DType::F32;
  return c;
}

struct Fixture {
  TempDir tmp{"test_serve"};
  std::string weights = (tmp.path / "w.h5").string();
  explicit Fixture(bool big = false) {
    ModelConfig c = model_config(big);
    LocalDispatcher disp(c.experts);
    LM lm(c, disp);
    lm.init(77);
    io::save_weights(weights, lm);
  }
  // `anyk generate --temperature 0` text after the prompt.
  std::string generate(const std::string& prompt, int max_new, const std::string& kopts) {
    RunResult r = run_anyk("generate --weights " + weights + " --threads 1 --max-new " + std::to_string(max_new) +
                           " --prompt '" + prompt + "' " + kopts);
    REQUIRE_MESSAGE(r.rc == 0, r.err);
    REQUIRE(r.out.size() >= prompt.size() + 1);
    return r.out.substr(prompt.size(), r.out.size() - prompt.size() - 1);
  }
};

// A running `anyk serve --port 0`: its port from the start line.
struct ServeProcess {
  std::unique_ptr<Process> p;
  int port = 0;
  ServeProcess(const std::string& weights, const std::string& extra) {
    p = std::make_unique<Process>(anyk_argv("serve --weights " + weights + " --port 0 --threads 1 " + extra));
    std::smatch m;
    const std::regex re("listening on http://127\\.0\\.0\\.1:([0-9]+)");
    REQUIRE_MESSAGE(wait_until(60, [&] {
                      const std::string out = p->out();
                      if (std::regex_search(out, m, re)) port = std::stoi(m[1].str());
                      return port > 0 || p->wait_for(0);
                    }),
                    (std::string("serve did not start: ") + p->err()));
    REQUIRE_MESSAGE(port > 0, (std::string("serve exited: ") + p->err()));
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    return c;
  }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port) + path; }
};

Json post(const ServeProcess& s, const Json& body, int want = 200) {
  auto res = s.client().Post("/v1/completions", body.dump(), "application/json");
  REQUIRE(res);
  INFO(res->body);
  CHECK(res->status == want);
  return parse_json(res->body, "completion response");
}

std::string text_of(const Json& r) { return r.at("choices").at(0).at("text").get<std::string>(); }

double metric(const ServeProcess& s, const std::string& name) {
  auto res = s.client().Get("/metrics");
  REQUIRE(res);
  const size_t at = res->body.find("\n" + name + " ");
  REQUIRE_MESSAGE(at != std::string::npos, (name + " missing in /metrics:\n" + res->body));
  return std::stod(res->body.substr(at + name.size() + 2));
}

}  // namespace

TEST_CASE("anyk serve: greedy completions equal anyk generate at every K, alone and batched together") {
  Fixture f;
  ServeProcess s(f.weights, "--slots 4 --batch-wait-ms 300");
  struct Case {
    std::string prompt, kopts;
    Json fields;
  };
  const std::vector<Case> cases = {{"Hello", "--k 1", {{"k", 1}}},
                                   {"Hello", "--k 4", {{"k", 4}}},
                                   {"The cat", "--layer-k 3,1", {{"layer_k", {3, 1}}}},
                                   {"Once", "--top-p 0.6 --k 4", {{"k", 4}, {"expert_top_p", 0.6}}}};
  const int N = 40;
  std::vector<std::string> want;
  for (const Case& c : cases) want.push_back(f.generate(c.prompt, N, c.kopts));
  auto body = [&](const Case& c) {
    Json b = {{"prompt", c.prompt}, {"max_tokens", N}, {"temperature", 0}, {"model", "w.h5"}};
    for (auto it = c.fields.begin(); it != c.fields.end(); ++it) b[it.key()] = it.value();
    return b;
  };
  // Alone, one after the other.
  for (size_t i = 0; i < cases.size(); ++i) {
    CAPTURE(cases[i].kopts);
    Json r = post(s, body(cases[i]));
    CHECK(text_of(r) == want[i]);
    CHECK(r.at("choices").at(0).at("finish_reason") == "length");
    const Json& u = r.at("usage");
    CHECK(u.at("completion_tokens") == N);
    CHECK(u.at("prompt_tokens") == int(cases[i].prompt.size()));
    const double k = u.at("k_mean").get<double>();
    if (i == 0) CHECK(k == 1.0);
    if (i == 1) CHECK(k == 4.0);
    if (i == 2) CHECK(u.at("k_per_layer") == Json::array({3.0, 1.0}));
    if (i == 3) CHECK((k >= 1.0 && k < 4.0));
    CHECK(u.at("active_params_per_token").get<int64_t>() < u.at("total_params").get<int64_t>());
  }
  // Together: the four at their different K in one batch (the batch wait gathers them).
  const double steps0 = metric(s, "anyk_decode_steps_total");
  std::vector<std::string> got(cases.size());
  std::vector<std::thread> ts;
  for (size_t i = 0; i < cases.size(); ++i)
    ts.emplace_back([&, i] {
      auto res = s.client().Post("/v1/completions", body(cases[i]).dump(), "application/json");
      if (res && res->status == 200) got[i] = text_of(Json::parse(res->body));
    });
  for (auto& t : ts) t.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    CAPTURE(cases[i].kopts);
    CHECK(got[i] == want[i]);
  }
  // Batched: far fewer decode steps than the 4 x 39 that one at a time would take.
  CHECK(metric(s, "anyk_decode_steps_total") - steps0 < 2 * (N - 1));

  // Streamed (curl, server-sent events) equals the whole answer.
  Json sb = body(cases[1]);
  sb["stream"] = true;
  RunResult c = run_command({"curl", "-sS", "-N", "-H", "Content-Type: application/json", "-d", sb.dump(),
                             s.url("/v1/completions")});
  REQUIRE(c.rc == 0);
  std::string streamed, finish;
  int events = 0;
  bool done = false;
  for (size_t pos = 0; (pos = c.out.find("data: ", pos)) != std::string::npos;) {
    const size_t end = c.out.find("\n\n", pos);
    REQUIRE(end != std::string::npos);
    const std::string data = c.out.substr(pos + 6, end - pos - 6);
    pos = end;
    if (data == "[DONE]") {
      done = true;
      break;
    }
    Json e = Json::parse(data);
    streamed += text_of(e);
    if (!e.at("choices").at(0).at("finish_reason").is_null()) finish = e.at("choices").at(0).at("finish_reason");
    ++events;
  }
  CHECK(done);
  CHECK(events >= 2);  // text (in one or more pieces, as fast as the model makes it), then the finish
  CHECK(finish == "length");
  CHECK(streamed == want[1]);

  // A stop string cuts the text before it (both ways).
  const std::string stop = want[0].substr(10, 3);
  Json stopped = body(cases[0]);
  stopped["stop"] = stop;
  Json r = post(s, stopped);
  CHECK(text_of(r) == want[0].substr(0, want[0].find(stop)));
  CHECK(r.at("choices").at(0).at("finish_reason") == "stop");
  s.p->signal(SIGTERM);
  REQUIRE(s.p->wait_for(60));
  CHECK(s.p->result().rc == 0);
}

TEST_CASE("anyk serve: k auto follows the target; 25 bad requests get 4xx and the server keeps serving") {
  Fixture f;
  {
    ServeProcess s(f.weights, "--target-ms-per-token 100000 --k-min 2 --k-max 3");
    Json r = post(s, {{"prompt", "abc"}, {"max_tokens", 8}, {"temperature", 0}, {"k", "auto"}});
    CHECK(r.at("usage").at("k_mean") == 3.0);
    CHECK(r.at("usage").at("k_auto") == true);
    CHECK(metric(s, "anyk_auto_k") == 3);
  }
  {
    ServeProcess s(f.weights, "--target-ms-per-token 0.000001 --k-min 2 --k-max 3");
    Json r = post(s, {{"prompt", "abc"}, {"max_tokens", 8}, {"temperature", 0}, {"k", "auto"}});
    CHECK(r.at("usage").at("k_mean") == 2.0);
    CHECK(metric(s, "anyk_auto_k") == 2);
  }
  ServeProcess s(f.weights, "--max-body-bytes 4096");
  const std::vector<std::pair<std::string, int>> bad = {
      {"not json", 400},
      {"[1, 2]", 400},
      {R"({"max_tokens": 4})", 400},
      {R"({"prompt": 7})", 400},
      {R"({"prompt": ""})", 400},
      {R"({"prompt": ["a", "b"]})", 400},
      {R"({"prompt": "hi", "k": 0})", 400},
      {R"({"prompt": "hi", "k": 5})", 400},
      {R"({"prompt": "hi", "k": "fast"})", 400},
      {R"({"prompt": "hi", "k": "auto"})", 400},
      {R"({"prompt": "hi", "layer_k": [1, 2, 3]})", 400},
      {R"({"prompt": "hi", "k": 2, "layer_k": [1, 2]})", 400},
      {R"({"prompt": "hi", "expert_top_p": 0})", 400},
      {R"({"prompt": "hi", "expert_top_p": 1.5})", 400},
      {R"({"prompt": "hi", "temperature": "hot"})", 400},
      {R"({"prompt": "hi", "temperature": -1})", 400},
      {R"({"prompt": "hi", "top_p": 0})", 400},
      {R"({"prompt": "hi", "max_tokens": 0})", 400},
      {R"({"prompt": "hi", "max_tokens": "ten"})", 400},
      {R"({"prompt": "hi", "max_tokens": 255})", 400},  // 2 + 255 > the context of 256
      {R"({"prompt": "hi", "stream": "yes"})", 400},
      {R"({"prompt": "hi", "n": 2})", 400},
      {R"({"prompt": "hi", "stop": 5})", 400},
      {R"({"prompt": "hi", "model": "gpt-4"})", 404},
      {R"({"prompt": "h\u00e9"})", 400},  // a byte >= the vocab of 128
  };
  REQUIRE(bad.size() == 25);
  for (const auto& bs : bad) {
    const std::string& body = bs.first;
    const int status = bs.second;
    CAPTURE(body);
    auto res = s.client().Post("/v1/completions", body, "application/json");
    REQUIRE(res);
    CHECK(res->status == status);
    Json e = parse_json(res->body, "error body");
    CHECK(e.at("error").at("message").get<std::string>().size() > 5);
    CHECK(e.at("error").at("type").is_string());
  }
  auto big = s.client().Post("/v1/completions", std::string(5000, ' '), "application/json");
  REQUIRE(big);
  CHECK(big->status == 413);
  auto nope = s.client().Get("/nope");
  REQUIRE(nope);
  CHECK(nope->status == 404);
  CHECK(parse_json(nope->body).at("error").is_object());
  // Still serving.
  Json ok = post(s, {{"prompt", "hi"}, {"max_tokens", 3}});
  CHECK(ok.at("usage").at("completion_tokens") == 3);
  CHECK(metric(s, "anyk_requests_total{code=\"400\"}") == 24);
  auto models = s.client().Get("/v1/models");
  REQUIRE(models);
  CHECK(parse_json(models->body).at("data").at(0).at("id") == "w.h5");
  auto health = s.client().Get("/health");
  REQUIRE(health);
  CHECK(health->status == 200);
}

TEST_CASE("anyk serve: a full queue answers 429 with Retry-After; SIGTERM finishes accepted requests, exits 0") {
  {
    // Two slots, no queue: while two long requests run (500 tokens at K=8 on the larger model),
    // a third is refused.
    Fixture big(true);
    ServeProcess s(big.weights, "--slots 2 --max-queue 0 --batch-wait-ms 5000");
    auto long_one = [&] { post(s, {{"prompt", "a"}, {"max_tokens", 500}, {"k", 8}}); };
    std::thread first(long_one), second(long_one);
    REQUIRE(wait_until(30, [&] { return metric(s, "anyk_batch_size") == 2; }));
    auto res = s.client().Post("/v1/completions", R"({"prompt": "c", "max_tokens": 4})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 429);
    CHECK(res->get_header_value("Retry-After") == "1");
    CHECK(parse_json(res->body).at("error").at("type") == "rate_limit_error");
    first.join();
    second.join();
  }
  // SIGTERM while a request waits in the queue: it is still answered in full, then exit 0.
  Fixture f;
  ServeProcess s(f.weights, "--slots 2 --batch-wait-ms 20000");
  const std::string want = f.generate("Hi", 30, "--k 2");
  std::string got;
  std::thread t([&] { got = text_of(post(s, {{"prompt", "Hi"}, {"max_tokens", 30}, {"temperature", 0}, {"k", 2}})); });
  REQUIRE(wait_until(30, [&] { return metric(s, "anyk_queue_length") == 1; }));
  s.p->signal(SIGTERM);
  t.join();
  CHECK(got == want);
  REQUIRE(s.p->wait_for(60));
  CHECK(s.p->result().rc == 0);
  CHECK(s.p->out().find("serve: stopped") != std::string::npos);
}

TEST_CASE("anyk serve: bounded load, 200 requests 16 at a time at K=1, K=4 and auto: no errors, stable text") {
  // Under a load that keeps the batch full and changing, every K=1 answer is the same text (and
  // anyk generate's), every K=4 answer too: batch composition never changes a request's tokens.
  Fixture f;
  const std::string prompt = "Load";
  const int N = 16;
  const std::string want1 = f.generate(prompt, N, "--k 1"), want4 = f.generate(prompt, N, "--k 4");
  ServeProcess s(f.weights, "--slots 8 --max-queue 64 --target-ms-per-token 5");
  std::atomic<int> next{0}, errors{0}, wrong{0};
  std::mutex mu;
  std::vector<double> lat;
  auto worker = [&] {
    httplib::Client c("127.0.0.1", s.port);
    c.set_read_timeout(120, 0);
    c.set_keep_alive(true);  // as OpenAI's clients do: one connection for all of this client's requests
    for (int i; (i = next++) < 200;) {
      Json b = {{"prompt", prompt}, {"max_tokens", N}, {"temperature", 0}};
      b["k"] = i % 3 == 0 ? Json(1) : i % 3 == 1 ? Json(4) : Json("auto");
      const auto t0 = std::chrono::steady_clock::now();
      auto res = c.Post("/v1/completions", b.dump(), "application/json");
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!res || res->status != 200) {
        ++errors;
        std::lock_guard<std::mutex> lk(mu);
        MESSAGE("request " << i << ": " << (res ? "HTTP " + std::to_string(res->status) + " " + res->body
                                              : "no answer: " + httplib::to_string(res.error())) << " after " << sec << " s");
        continue;
      }
      const std::string text = Json::parse(res->body).at("choices").at(0).at("text");
      if ((i % 3 == 0 && text != want1) || (i % 3 == 1 && text != want4)) ++wrong;
      std::lock_guard<std::mutex> lk(mu);
      lat.push_back(sec);
    }
  };
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (int i = 0; i < 16; ++i) ts.emplace_back(worker);
  for (auto& t : ts) t.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(errors == 0);
  CHECK(wrong == 0);
  REQUIRE(lat.size() == 200);
  std::sort(lat.begin(), lat.end());
  MESSAGE("200 requests, 16 clients: " << 200 * N / wall << " tok/s, p50 " << lat[100] << " s, p99 " << lat[198]
                                       << " s, auto K mean " << metric(s, "anyk_auto_k_mean"));
  CHECK(metric(s, "anyk_generation_tokens_total") == 200 * N);
}
