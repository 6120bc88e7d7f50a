// The thread governor (see thread_governor.h).
#include "kernels/cpu/thread_governor.h"

#include <dirent.h>
#include <omp.h>
#include <sched.h>
#include <strings.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace anyk::cpu {

constexpr double kDropDelayCores = 0.3, kAddIdleCores = 0.7;  // the rule's thresholds

int governed_threads(int current, int max_threads, const GovernorReading& r) {
  max_threads = std::max(1, max_threads);
  current = std::clamp(current, 1, max_threads);
  if (current > 1 && r.delay_cores >= kDropDelayCores) {
    const int drop = std::max(1, int(std::lround(r.delay_cores)));
    return std::max(1, current - drop);
  }
  if (current < max_threads && r.idle_cores >= kAddIdleCores) {
    const int add = std::max(1, int(std::floor(r.idle_cores + 0.3)));
    return std::min(max_threads, current + add);
  }
  return current;
}

namespace {

// The second field of a schedstat file (nanoseconds runnable but waiting), or -1.
double schedstat_delay(const char* path) {
  std::FILE* f = std::fopen(path, "re");
  if (!f) return -1;
  unsigned long long run = 0, wait = 0;
  const int got = std::fscanf(f, "%llu %llu", &run, &wait);
  std::fclose(f);
  return got == 2 ? double(wait) * 1e-9 : -1;
}

std::vector<int> self_tids() {
  std::vector<int> tids;
  DIR* d = ::opendir("/proc/self/task");
  if (!d) return tids;
  while (const dirent* e = ::readdir(d))
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9') tids.push_back(std::atoi(e->d_name));
  ::closedir(d);
  return tids;
}

std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

}  // namespace

double run_delay_seconds(const std::vector<int>& tids) {
  double sum = 0;
  char path[64];
  for (int t : tids) {
    std::snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", t);
    const double d = schedstat_delay(path);
    if (d < 0) return -1;
    sum += d;
  }
  return sum;
}

double idle_seconds(const std::vector<int>& cpus) {
  std::FILE* f = std::fopen("/proc/stat", "re");
  if (!f) return -1;
  static const double tick = 1.0 / double(std::max(1L, ::sysconf(_SC_CLK_TCK)));
  double sum = 0;
  int found = 0;
  char line[512];
  while (std::fgets(line, sizeof line, f)) {
    int cpu = -1;
    unsigned long long v[5] = {};
    if (std::sscanf(line, "cpu%d %llu %llu %llu %llu %llu", &cpu, &v[0], &v[1], &v[2], &v[3], &v[4]) != 6) continue;
    if (std::find(cpus.begin(), cpus.end(), cpu) == cpus.end()) continue;
    sum += double(v[3] + v[4]) * tick;  // idle + iowait
    ++found;
  }
  std::fclose(f);
  return found == int(cpus.size()) ? sum : -1;
}

GovernorSample governor_sample() {
  GovernorSample s;
  // Threads that exit between two samples take their delay with them; a thread whose file
  // vanished while being read is skipped, not an error.
  double delay = 0;
  char path[64];
  for (int t : self_tids()) {
    std::snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", t);
    const double d = schedstat_delay(path);
    if (d >= 0) delay += d;
  }
  static const std::vector<int> cpus = allowed_cpus();
  const double idle = cpus.empty() ? -1 : idle_seconds(cpus);
  static const bool schedstat = ::access("/proc/self/schedstat", R_OK) == 0;
  s.ok = schedstat && idle >= 0;
  s.delay_s = delay;
  s.idle_s = idle;
  return s;
}

namespace {

using clock = std::chrono::steady_clock;
constexpr double kDelayWindow = 0.05;  // seconds
constexpr double kFirstDelayWindow = 0.015;  // the first reading after configure
constexpr double kIdleWindow = 0.25;
constexpr double kSpareWindow = 0.05;  // regions_cheap's spare-core reading

struct Governor {
  std::mutex mu;
  std::atomic<int> threads{1};
  std::atomic<bool> configured{false};
  std::atomic<bool> adaptive{false};
  int max_threads = 1;
  int min_used = 1;
  int64_t changes = 0;
  bool have_sample = false;
  bool decided = false;     // a decision was taken since configure (the first window is shorter)
  std::atomic<bool> spare{false};  // a reading since configure showed a core to spare
  GovernorSample last;      // the last sample, for the run delay
  clock::time_point last_t;
  double idle_s = 0;        // idle time at the start of the idle window
  clock::time_point idle_t;
};

Governor& gov() {
  static Governor g;
  return g;
}

thread_local int applied = -1;  // the count this thread last gave OpenMP

bool adaptive_env() {
  const char* v = std::getenv("ANYK_ADAPTIVE_THREADS");
  return !(v && std::strcmp(v, "0") == 0);
}

void apply() {
  const int n = gov().threads.load(std::memory_order_relaxed);
  if (n != applied) {
    omp_set_num_threads(n);
    applied = n;
  }
}

// ANYK_TEST_GOVERNOR_CYCLE=1 (tests only): every tick moves the count down by one, from 1 back to
// the maximum, without reading /proc, so a test sees the count change between kernels.
bool test_cycle() {
  static const bool on = [] {
    const char* v = std::getenv("ANYK_TEST_GOVERNOR_CYCLE");
    return v && std::strcmp(v, "1") == 0;
  }();
  return on;
}

void record(Governor& g, int next) {
  if (next == g.threads.load(std::memory_order_relaxed)) return;
  g.threads.store(next, std::memory_order_relaxed);
  g.min_used = std::min(g.min_used, next);
  ++g.changes;
}

// One reading and decision, when a window has passed (under the lock). Run delay is counted in
// nanoseconds, so a short window (50 ms; 15 ms for the first) sees a busy core at once; idle time
// comes in clock ticks (10 ms), so adding a thread waits for a longer idle window (250 ms). After
// a change both windows start again, so every reading is of the current count. A core to spare
// (regions_cheap) needs only kSpareWindow of the idle window: 50 ms of 2 CPUs read 0-1 ticks of
// idle time beside a busy process and 4-6 with one core idle.
void measure(Governor& g) {
  if (test_cycle()) {
    const int cur = g.threads.load(std::memory_order_relaxed);
    record(g, cur > 1 ? cur - 1 : g.max_threads);
    return;
  }
  const auto now = clock::now();
  const auto since = [&](clock::time_point t) { return std::chrono::duration<double>(now - t).count(); };
  if (g.have_sample && since(g.last_t) < (g.decided ? kDelayWindow : kFirstDelayWindow)) return;
  const GovernorSample s = governor_sample();
  if (!s.ok) {  // no /proc: keep the count fixed from now on
    g.adaptive.store(false);
    return;
  }
  const int cur = g.threads.load(std::memory_order_relaxed);
  int next = cur;
  if (g.have_sample) {
    GovernorReading r{std::max(0.0, s.delay_s - g.last.delay_s) / since(g.last_t), 0};
    const double idle_cores = std::max(0.0, s.idle_s - g.idle_s) / since(g.idle_t);
    if (since(g.idle_t) >= kIdleWindow) r.idle_cores = idle_cores;
    if (since(g.idle_t) >= kSpareWindow && idle_cores >= kAddIdleCores) g.spare.store(true, std::memory_order_relaxed);
    next = governed_threads(cur, g.max_threads, r);
    record(g, next);
    g.decided = true;
  }
  g.last = s;
  g.last_t = now;
  if (!g.have_sample || next != cur || since(g.idle_t) >= kIdleWindow) {
    g.idle_s = s.idle_s;
    g.idle_t = now;
  }
  g.have_sample = true;
}

}  // namespace

void governor_configure(int max_threads, bool adaptive) {
  Governor& g = gov();
  {
    std::lock_guard<std::mutex> lock(g.mu);
    g.max_threads = std::max(1, max_threads);
    g.adaptive.store(adaptive && g.max_threads > 1 && adaptive_env());
    g.threads.store(g.max_threads, std::memory_order_relaxed);
    g.min_used = g.max_threads;
    g.changes = 0;
    g.have_sample = false;
    g.decided = false;
    g.spare.store(false);
    g.configured.store(true);
  }
  applied = -1;
  apply();
}

void governor_tick() {
  // Inside any parallel region, active or not (an `if (false)` region has its own copy of the
  // thread count, which a change would not outlive): the caller outside it ticks.
  if (omp_get_level() > 0) return;
  Governor& g = gov();
  if (!g.configured.load(std::memory_order_relaxed)) return;  // a library user that set its own count
  if (g.adaptive.load(std::memory_order_relaxed)) {
    std::unique_lock<std::mutex> lock(g.mu, std::try_to_lock);
    if (lock.owns_lock() && g.adaptive.load()) measure(g);
  }
  apply();
}

int governor_threads() {
  const Governor& g = gov();
  return g.configured.load(std::memory_order_relaxed) ? g.threads.load(std::memory_order_relaxed)
                                                      : omp_get_max_threads();
}

GovernorSummary governor_summary() {
  Governor& g = gov();
  std::lock_guard<std::mutex> lock(g.mu);
  return {g.max_threads, g.adaptive.load(), g.min_used, g.changes};
}

bool wait_policy_spins(const char* wait_policy, const char* spincount) {
  if (spincount) {
    if (strcasecmp(spincount, "infinite") == 0 || strcasecmp(spincount, "infinity") == 0) return true;
    char* end = nullptr;
    errno = 0;
    const long long n = std::strtoll(spincount, &end, 10);
    // libgomp takes a count with an optional k/M/G/T suffix (x1000 each); anything else it ignores.
    long long scale = 1;
    if (end != spincount && *end) {
      const char* units = "kMGT";
      const char* u = std::strchr(units, *end);
      if (u && end[1] == '\0') {
        for (const char* q = units; q <= u; ++q) scale *= 1000;
        ++end;
      }
    }
    if (end != spincount && *end == '\0' && errno == 0 && n >= 0)
      return n >= (kSpinningCount + scale - 1) / scale;
  }
  return !(wait_policy && strcasecmp(wait_policy, "passive") == 0);
}

bool regions_cheap() {
  static const bool spins = wait_policy_spins(std::getenv("OMP_WAIT_POLICY"), std::getenv("GOMP_SPINCOUNT"));
  static const int cpus = std::max<int>(1, int(allowed_cpus().size()));
  if (!spins || omp_get_max_threads() > cpus) return false;
  const Governor& g = gov();
  if (!g.configured.load(std::memory_order_relaxed) || !g.adaptive.load(std::memory_order_relaxed)) return true;
  return g.spare.load(std::memory_order_relaxed);
}

std::string governor_mode_text() {
  const GovernorSummary s = governor_summary();
  if (s.max_threads == 1) return "";
  if (s.adaptive) return "; fewer while other processes hold its cores (ANYK_ADAPTIVE_THREADS=0 keeps them)";
  return "; fixed";
}

}  // namespace anyk::cpu
