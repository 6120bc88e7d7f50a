// A bounded load test for `anyk serve` on loopback: R requests, C at a time, each a completion of
// --max-tokens greedy tokens at one K setting (--k 1, --k 4, --k auto, ...). Prints throughput
// (requests/s and generated tokens/s over the wall time), p50/p99 request latency, the mean
// per-token latency (request time / tokens), the mean K the server reports in usage, and the
// errors (any answer other than 200). Exits 1 when any request failed.
//
//   build/anyk serve --weights w.h5 --slots 16 --target-ms-per-token 20 &
//   build/serve_load --port 8080 --requests 200 --concurrency 16 --k auto --max-tokens 32
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Args {
  std::string host = "127.0.0.1", k = "1", prompt = "The meaning of life is";
  int port = 8080, requests = 200, concurrency = 16, max_tokens = 32;
  double time_limit = 600;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--host") a.host = v;
    else if (k == "--port") a.port = std::atoi(v.c_str());
    else if (k == "--requests") a.requests = std::atoi(v.c_str());
    else if (k == "--concurrency") a.concurrency = std::atoi(v.c_str());
    else if (k == "--max-tokens") a.max_tokens = std::atoi(v.c_str());
    else if (k == "--k") a.k = v;
    else if (k == "--prompt") a.prompt = v;
    else if (k == "--time-limit") a.time_limit = std::atof(v.c_str());
    else {
      std::fprintf(stderr, "serve_load: unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return a;
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))];
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  using Clock = std::chrono::steady_clock;
  nlohmann::json body = {{"prompt", a.prompt}, {"max_tokens", a.max_tokens}, {"temperature", 0}};
  if (a.k == "auto") body["k"] = "auto";
  else body["k"] = std::atoi(a.k.c_str());
  const std::string text = body.dump();
  std::atomic<int> next{0}, errors{0};
  std::mutex mu;
  std::vector<double> lat, per_token;
  double k_sum = 0;
  int64_t tokens = 0;
  const auto t0 = Clock::now();
  auto worker = [&] {
    httplib::Client c(a.host, a.port);
    c.set_read_timeout(600, 0);
    for (int i; (i = next++) < a.requests;) {
      if (std::chrono::duration<double>(Clock::now() - t0).count() > a.time_limit) {
        ++errors;
        continue;
      }
      const auto s = Clock::now();
      auto res = c.Post("/v1/completions", text, "application/json");
      const double sec = std::chrono::duration<double>(Clock::now() - s).count();
      if (!res || res->status != 200) {
        ++errors;
        continue;
      }
      auto j = nlohmann::json::parse(res->body);
      const int n = j["usage"]["completion_tokens"].get<int>();
      std::lock_guard<std::mutex> lk(mu);
      lat.push_back(sec);
      per_token.push_back(1e3 * sec / std::max(1, n));
      k_sum += j["usage"]["k_mean"].get<double>();
      tokens += n;
    }
  };
  std::vector<std::thread> ts;
  for (int i = 0; i < a.concurrency; ++i) ts.emplace_back(worker);
  for (auto& t : ts) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  double mean_pt = 0;
  for (double v : per_token) mean_pt += v;
  mean_pt /= std::max<size_t>(1, per_token.size());
  std::printf("k=%-5s requests %d concurrency %d | %.2f req/s, %.1f tok/s | latency p50 %.3f s p99 %.3f s | "
              "ms/token mean %.2f p50 %.2f | mean K %.2f | errors %d\n",
              a.k.c_str(), a.requests, a.concurrency, double(lat.size()) / wall, double(tokens) / wall, pct(lat, 0.5),
              pct(lat, 0.99), mean_pt, pct(per_token, 0.5), lat.empty() ? 0.0 : k_sum / double(lat.size()),
              errors.load());
  return errors ? 1 : 0;
}
