// Validation loss at forced K, the K-sweep table and its JSON.
#include "eval/evaluate.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include "io/json.h"
#include "kernels/cpu/thread_governor.h"
#include "core/check.h"

namespace anyk::eval {

double EvalResult::bits() const { return loss / std::log(2.0); }

std::string k_setting_name(std::span<const int> k) {
  bool uniform = true;
  for (int v : k) uniform = uniform && v == k[0];
  std::string s = "K=";
  if (uniform && !k.empty()) return s + std::to_string(k[0]);
  for (size_t i = 0; i < k.size(); ++i) s += (i ? "," : "") + std::to_string(k[i]);
  return s;
}

EvalResult evaluate(const LM& lm, const data::Loader& val, std::span<const int> k, int B,
                    int64_t max_windows, Arena& arena, const std::string& label,
                    const std::function<void(const ForwardStats&)>& on_batch) {
  ANYK_CHECK(lm.config().router.top_p == 0,
             "evaluate needs a forced-K router (top_p = 0), got top_p " << lm.config().router.top_p);
  ANYK_CHECK(B >= 1, "eval batch " << B << " must be >= 1");
  const int T = val.seq_len();
  int64_t n = val.num_eval_windows();
  ANYK_CHECK(n >= 1, "the validation split is shorter than one window of " << T + 1
                                                                           << " tokens hint: lower --seq-len");
  if (max_windows > 0 && max_windows < n) n = max_windows;
  EvalResult r;
  r.name = k_setting_name(k);
  r.k.assign(k.begin(), k.end());

  std::vector<int> in(size_t(B) * T), tgt(size_t(B) * T);
  Tape tape(arena);
  tape.set_grad_enabled(false);
  double sum = 0;  // summed token losses
  const auto t0 = std::chrono::steady_clock::now();
  auto last = t0;
  bool printed = false;
  const bool tty = isatty(fileno(stderr));
  for (int64_t w0 = 0; w0 < n; w0 += B) {
    cpu::governor_tick();  // the thread count for this batch (kernels/cpu/thread_governor.h)
    const int b = int(std::min<int64_t>(B, n - w0));
    for (int i = 0; i < b; ++i) val.eval_window(w0 + i, &in[size_t(i) * T], &tgt[size_t(i) * T]);
    arena.reset();
    tape.clear();
    ForwardStats st;
    st.capture_router = bool(on_batch);
    lm.forward(tape, in.data(), tgt.data(), b, T, k, &st, 0);  // st.ce: mean over b*T tokens
    sum += st.ce * double(b) * T;
    if (on_batch) on_batch(st);
    auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last).count() > 2.0 && w0 + b < n) {
      last = now;
      printed = true;
      std::fprintf(stderr, tty ? "\r  %s %s: %lld/%lld windows" : "  %s %s: %lld/%lld windows\n",
                   label.c_str(), r.name.c_str(), (long long)(w0 + b), (long long)n);
      std::fflush(stderr);
    }
  }
  if (printed && tty) std::fprintf(stderr, "\r%*s\r", 60, "");
  arena.reset();
  tape.clear();
  r.windows = n;
  r.tokens = n * T;
  r.loss = sum / double(r.tokens);
  return r;
}

std::vector<std::string> result_table(const std::vector<EvalResult>& rs, bool byte_tokens) {
  std::vector<std::string> lines;
  size_t w = 1;
  for (const auto& r : rs) w = std::max(w, r.name.size());
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-*s | val loss (nats) | %s", int(w), "K",
                byte_tokens ? "bits/byte" : "bits/token");
  lines.push_back(buf);
  lines.push_back(std::string(w, '-') + "-+-----------------+----------");
  for (const auto& r : rs) {
    std::snprintf(buf, sizeof buf, "%-*s | %15.4f | %9.4f", int(w), r.name.c_str(), r.loss, r.bits());
    lines.push_back(buf);
  }
  return lines;
}

std::string results_json(const std::vector<EvalResult>& rs) {
  io::Json list = io::Json::array();
  for (const auto& r : rs)
    list.push_back({{"name", r.name}, {"k", r.k}, {"val_loss", r.loss}, {"bits_per_byte", r.bits()},
                    {"windows", r.windows}, {"tokens", r.tokens}});
  return io::json_text(io::Json{{"results", list}}) + "\n";
}

}  // namespace anyk::eval
