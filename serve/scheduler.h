// Continuous batching across K for `anyk serve`: one thread owns a KVDecoder of `slots` sequences
// and runs it step by step. Before each step, queued requests take free slots (each one's prompt
// in a pass of its own, the pass `anyk generate` makes, then its first token); then one decode
// step carries every running request, each at its own K (model/generate.h Segment::k), so the
// weights are read once per step for all of them; a request leaves the batch after the step that
// finishes it. Decode steps are row-invariant (KVDecoder::set_row_invariant): a request's tokens
// do not depend on what it is batched with, and its greedy tokens are those of `anyk generate`.
//
// Requests with auto K get, at each step, the K that StepCostModel (auto_k.h) predicts keeps the
// step under the target time with the batch of that step; fixed-K requests are never changed.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/generate.h"
#include "serve/auto_k.h"

namespace anyk::serve {

// What a finished request reports (also for usage in the response).
struct Outcome {
  std::vector<int> tokens;          // generated
  std::string finish_reason;        // "length", "stop", or "error" (a failed pass; error says why)
  std::string error;
  std::vector<int64_t> routed;      // (L) experts routed for this request's tokens at each layer
  int64_t rows = 0;                 // tokens passed through the model (prompt and decoded)
  double seconds = 0;               // from admission to the last token
  double queue_seconds = 0;         // waiting for a slot
  double mean_k() const;            // routed / (rows * L)
  std::vector<double> k_per_layer() const;
};

struct Request {
  std::vector<int> prompt;  // non-empty; prompt + max_tokens <= the decoder's capacity
  InferenceK k;             // when !auto_k: the request's K (top_p: expert top-p under k)
  bool auto_k = false;
  SampleOptions sample;
  int max_tokens = 16;
  // On the scheduler thread, after each new token: false stops the request ("stop").
  std::function<bool(int token)> on_token;
  // On the scheduler thread, once, when the request ends.
  std::function<void(const Outcome&)> on_done;
};

struct SchedulerOptions {
  int slots = 8;             // requests decoded together at most
  int max_queue = 64;        // requests waiting for a slot at most
  int capacity = 0;          // tokens per slot (0: the model's seq_len)
  double target_ms = 0;      // auto K: the step-time target (0: auto K is not offered)
  int k_min = 1, k_max = 0;  // auto K's range (k_max 0: the model's experts)
  int threads = 0;           // OpenMP threads of the scheduler thread's passes (0: OpenMP's default)
  double batch_wait_ms = 0;  // when idle, how long the first queued request waits for others to join it
};

// Counters and the last step's state, for /metrics.
struct SchedulerStats {
  int64_t steps = 0, prompt_tokens = 0, generated = 0, finished = 0;
  int running = 0, queued = 0;
  int last_auto_k = 0;                  // K given to auto requests at the last step that had any
  int64_t auto_k_sum = 0, auto_k_steps = 0;  // over request-steps at auto K
  double last_step_ms = 0;
  std::vector<double> step_ms_buckets;  // histogram upper bounds (ms)
  std::vector<int64_t> step_ms_counts;  // cumulative counts per bucket (Prometheus le)
  double step_ms_sum = 0;
  std::array<double, 3> cost{};         // the fitted a, b, c of StepCostModel
};

class Scheduler {
 public:
  enum class Admit { Ok, QueueFull, Stopping };
  Scheduler(const LM& lm, const SchedulerOptions& o);
  ~Scheduler();  // drains (finishes every accepted request) and joins
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  Admit submit(Request r);
  void stop_accepting();  // submit answers Stopping from now on
  void drain();           // stop accepting; returns when every accepted request has finished
  bool draining() const;
  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return o_; }

  // Times a few decode steps at batch {1, slots} x K {k_min, k_max} to seed the cost model
  // (called by the constructor when target_ms > 0).
  void calibrate();

 private:
  struct Job;
  void loop();
  void admit(std::vector<std::shared_ptr<Job>>& fresh);
  void prefill(Job& j, int batch);
  void decode_step(std::chrono::steady_clock::time_point t_iter);
  void deliver(Job& j, const std::vector<double>& logits, int row);
  void finish(Job& j, const char* reason);
  int auto_k_for(const std::vector<double>& fixed_k, int n_auto) const;
  const LM* lm_;
  SchedulerOptions o_;
  KVDecoder dec_;
  StepCostModel cost_;
  mutable std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::shared_ptr<Job>> running_;
  std::vector<int> free_slots_;
  bool stopping_ = false;
  SchedulerStats st_;
  std::thread thread_;
};

}  // namespace anyk::serve
