// The continuous-batching loop of anyk serve; see scheduler.h.
#include "serve/scheduler.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include <omp.h>

#include "core/check.h"

namespace anyk::serve {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double mean_of(const std::vector<int>& v) { return double(std::accumulate(v.begin(), v.end(), 0)) / double(v.size()); }
}  // namespace

double Outcome::mean_k() const {
  if (rows == 0 || routed.empty()) return 0;
  return double(std::accumulate(routed.begin(), routed.end(), int64_t(0))) / double(rows * int64_t(routed.size()));
}

std::vector<double> Outcome::k_per_layer() const {
  std::vector<double> k;
  for (int64_t r : routed) k.push_back(rows ? double(r) / double(rows) : 0.0);
  return k;
}

struct Scheduler::Job {
  Request req;
  int slot = -1;
  std::vector<int> hist;
  InferenceK k;  // the K of its next pass
  Outcome out;
  Clock::time_point queued_at, started_at;
  bool done = false;
};

Scheduler::Scheduler(const LM& lm, const SchedulerOptions& o)
    : lm_(&lm), o_(o), dec_(lm, o.slots, o.capacity) {
  const ModelConfig& c = lm.config();
  if (o_.k_max == 0) o_.k_max = c.experts;
  ANYK_CHECK(o_.k_min >= 1 && o_.k_min <= o_.k_max && o_.k_max <= c.experts,
             "--k-min " << o_.k_min << " and --k-max " << o_.k_max << " must satisfy 1 <= k-min <= k-max <= experts="
                        << c.experts);
  ANYK_CHECK(o_.max_queue >= 0, "--max-queue " << o_.max_queue << " must be >= 0");
  ANYK_CHECK(o_.target_ms >= 0, "--target-ms-per-token " << o_.target_ms << " must be >= 0 (0: no auto K)");
  o_.capacity = dec_.capacity();
  for (int s = o_.slots - 1; s >= 0; --s) free_slots_.push_back(s);
  st_.step_ms_buckets = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000};
  st_.step_ms_counts.assign(st_.step_ms_buckets.size(), 0);
  if (o_.target_ms > 0) calibrate();
  thread_ = std::thread([this] {
    if (o_.threads > 0) omp_set_num_threads(o_.threads);  // OpenMP's thread count is per calling thread
    loop();
  });
}

Scheduler::~Scheduler() {
  drain();
  if (thread_.joinable()) thread_.join();
}

Scheduler::Admit Scheduler::submit(Request r) {
  auto j = std::make_shared<Job>();
  j->req = std::move(r);
  j->hist = j->req.prompt;
  j->k = j->req.k;
  j->out.routed.assign(size_t(lm_->config().layers), 0);
  j->queued_at = Clock::now();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) return Admit::Stopping;
    if (int(queue_.size()) >= o_.max_queue && free_slots_.size() <= queue_.size()) return Admit::QueueFull;
    queue_.push_back(j);
    st_.queued = int(queue_.size());
  }
  cv_.notify_all();
  return Admit::Ok;
}

void Scheduler::stop_accepting() {
  std::lock_guard<std::mutex> lk(mu_);
  stopping_ = true;
  cv_.notify_all();
}

void Scheduler::drain() {
  std::unique_lock<std::mutex> lk(mu_);
  stopping_ = true;
  cv_.notify_all();
  idle_cv_.wait(lk, [&] { return queue_.empty() && running_.empty(); });
}

bool Scheduler::draining() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stopping_;
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  SchedulerStats s = st_;
  s.cost = cost_.coefficients();
  return s;
}

void Scheduler::loop() {
  for (;;) {
    std::vector<std::shared_ptr<Job>> fresh;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] {
        return !running_.empty() || (!queue_.empty() && !free_slots_.empty()) || (stopping_ && queue_.empty());
      });
      if (stopping_ && queue_.empty() && running_.empty()) break;
      if (running_.empty() && o_.batch_wait_ms > 0) {  // idle: let a burst gather into one batch
        const auto until = queue_.front()->queued_at + std::chrono::microseconds(int64_t(o_.batch_wait_ms * 1e3));
        cv_.wait_until(lk, until, [&] { return stopping_ || int(queue_.size()) >= o_.slots; });
      }
      admit(fresh);
    }
    try {
      const auto t_iter = Clock::now();  // this step's prompt passes count in its time (auto K)
      for (auto& j : fresh) {
        {
          std::lock_guard<std::mutex> lk(mu_);
          running_.push_back(j);
        }
        prefill(*j, int(running_.size()));
      }
      if (std::any_of(running_.begin(), running_.end(), [](const auto& j) { return !j->done; })) decode_step(t_iter);
    } catch (const std::exception& e) {  // a failed pass ends every request in it, not the server
      for (auto& j : running_)
        if (!j->done) {
          j->out.error = e.what();
          finish(*j, "error");
        }
    }
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& j : running_)
      if (j->done) free_slots_.push_back(j->slot);
    running_.erase(std::remove_if(running_.begin(), running_.end(), [](const auto& j) { return j->done; }),
                   running_.end());
    st_.running = int(running_.size());
    if (queue_.empty() && running_.empty()) idle_cv_.notify_all();
  }
  idle_cv_.notify_all();
}

// Under mu_: queued requests into free slots, oldest first.
void Scheduler::admit(std::vector<std::shared_ptr<Job>>& fresh) {
  while (!queue_.empty() && !free_slots_.empty()) {
    auto j = queue_.front();
    queue_.pop_front();
    j->slot = free_slots_.back();
    free_slots_.pop_back();
    j->started_at = Clock::now();
    j->out.queue_seconds = std::chrono::duration<double>(j->started_at - j->queued_at).count();
    fresh.push_back(j);
  }
  st_.queued = int(queue_.size());
}

int Scheduler::auto_k_for(const std::vector<double>& fixed_k, int n_auto) const {
  if (cost_.samples() == 0) return o_.k_max;
  return cost_.choose(fixed_k, n_auto, lm_->config().experts, o_.target_ms, o_.k_min, o_.k_max);
}

// The prompt in a pass of its own (the pass anyk generate makes for one prompt), then its first token.
void Scheduler::prefill(Job& j, int batch) {
  const int L = lm_->config().layers;
  if (j.req.auto_k) {
    std::vector<double> fixed_k;
    int n_auto = 1;
    for (const auto& o : running_) {
      if (o->done || o.get() == &j) continue;
      if (o->req.auto_k) ++n_auto;
      else fixed_k.push_back(mean_of(o->req.k.k));
    }
    j.k = InferenceK{std::vector<int>(size_t(L), auto_k_for(fixed_k, n_auto)), 0};
  }
  dec_.reset(j.slot);
  dec_.set_row_invariant(false);
  Segment s{j.slot, j.hist.data(), int(j.hist.size()), &j.k, j.out.routed.data()};
  std::vector<double> logits;
  dec_.forward({&s, 1}, j.k, logits);
  j.out.rows += s.n;
  {
    std::lock_guard<std::mutex> lk(mu_);
    st_.prompt_tokens += s.n;
  }
  deliver(j, logits, 0);
}

// One token for every running request, each at its own K (auto requests at the rule's K).
void Scheduler::decode_step(Clock::time_point t_iter) {
  const int L = lm_->config().layers;
  std::vector<Job*> js;
  std::vector<double> fixed_k;
  int n_auto = 0;
  for (auto& j : running_) {
    if (j->done) continue;
    js.push_back(j.get());
    if (j->req.auto_k) ++n_auto;
    else fixed_k.push_back(mean_of(j->req.k.k));
  }
  const int B = int(js.size());
  const int k_auto = n_auto ? auto_k_for(fixed_k, n_auto) : 0;
  std::vector<Segment> segs;
  for (Job* j : js) {
    if (j->req.auto_k) j->k = InferenceK{std::vector<int>(size_t(L), k_auto), 0};
    segs.push_back(Segment{j->slot, &j->hist.back(), 1, &j->k, j->out.routed.data()});
  }
  dec_.set_row_invariant(true);
  const auto t0 = Clock::now();
  std::vector<double> logits;
  dec_.forward(segs, js[0]->k, logits);
  for (int i = 0; i < B; ++i) {
    js[size_t(i)]->out.rows += 1;
    deliver(*js[size_t(i)], logits, i);
  }
  const double ms = 1e3 * since(t0);
  // The cost model learns the whole iteration (the prompt passes of requests that joined in it
  // too): that is the time between two tokens of a running request.
  const double R = std::accumulate(fixed_k.begin(), fixed_k.end(), 0.0) + double(n_auto) * k_auto;
  cost_.add(R, expected_experts(lm_->config().experts, fixed_k, n_auto, k_auto), 1e3 * since(t_iter));
  std::lock_guard<std::mutex> lk(mu_);
  ++st_.steps;
  st_.last_step_ms = ms;
  st_.step_ms_sum += ms;
  for (size_t b = 0; b < st_.step_ms_buckets.size(); ++b)
    if (ms <= st_.step_ms_buckets[b]) ++st_.step_ms_counts[b];
  if (n_auto) {
    st_.last_auto_k = k_auto;
    st_.auto_k_sum += int64_t(k_auto) * n_auto;
    st_.auto_k_steps += n_auto;
  }
}

// Samples row `row` of logits for j (the draw of its own step index, as anyk generate), hands the
// token out and ends the request when it is done.
void Scheduler::deliver(Job& j, const std::vector<double>& logits, int row) {
  const int V = lm_->config().vocab;
  const int step = int(j.out.tokens.size());
  const double u = sample_uniform(j.req.sample.seed, step);
  const int t = sample_token(logits.data() + int64_t(row) * V, V, j.req.sample, u);
  j.hist.push_back(t);
  j.out.tokens.push_back(t);
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++st_.generated;
  }
  const bool go = j.req.on_token ? j.req.on_token(t) : true;
  if (!go) finish(j, "stop");
  else if (int(j.out.tokens.size()) >= j.req.max_tokens) finish(j, "length");
  else if (dec_.length(j.slot) + 1 > o_.capacity) finish(j, "length");
}

void Scheduler::finish(Job& j, const char* reason) {
  j.done = true;
  j.out.finish_reason = reason;
  j.out.seconds = since(j.started_at);
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++st_.finished;
  }
  if (j.req.on_done) j.req.on_done(j.out);
}

void Scheduler::calibrate() {
  const int L = lm_->config().layers;
  const int reps = 3;
  const std::vector<int> batches = o_.slots > 1 ? std::vector<int>{1, o_.slots} : std::vector<int>{1};
  const std::vector<int> ks = o_.k_min < o_.k_max ? std::vector<int>{o_.k_min, o_.k_max} : std::vector<int>{o_.k_min};
  const int V = lm_->config().vocab, E = lm_->config().experts;
  std::vector<int> tok(size_t(o_.slots));  // different tokens: the rows route differently
  for (int s = 0; s < o_.slots; ++s) tok[size_t(s)] = (s * 37 + 11) % V;
  for (int B : batches) {
    for (int K : ks) {
      const InferenceK k{std::vector<int>(size_t(L), K), 0};
      std::vector<Segment> segs;
      for (int s = 0; s < B; ++s) {
        dec_.reset(s);
        segs.push_back(Segment{s, &tok[size_t(s)], 1, &k, nullptr});
      }
      dec_.set_row_invariant(true);
      std::vector<double> logits;
      for (int r = 0; r < reps + 1 && dec_.length(0) + 1 <= o_.capacity; ++r) {
        const auto t0 = Clock::now();
        dec_.forward(segs, k, logits);
        for (int s = 0; s < B; ++s) sample_token(logits.data() + int64_t(s) * V, V, SampleOptions{}, 0.5);
        if (r > 0)  // the first pass warms the caches
          cost_.add(double(B) * K, expected_experts(E, std::vector<double>(size_t(B), K)), 1e3 * since(t0));
      }
    }
  }
  for (int s = 0; s < o_.slots; ++s) dec_.reset(s);
}

}  // namespace anyk::serve
