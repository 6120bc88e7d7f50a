// The thread governor (kernels/cpu/thread_governor.h): its rule keeps the count in [1, max],
// gives threads back only on run delay and takes them only on idle cores, monotonically; its
// sensors see what they claim on this machine's own threads: three busy threads pinned to one core
// wait for each other as long as their wall time minus their CPU time says (run delay), sleeping
// threads do not wait, and a core kept busy is not idle. A tick changes the count (and OpenMP's)
// outside parallel regions and never inside one, active or not (planted: guarding with
// omp_in_parallel(), which is false in an `if (false)` region, fails 4 checks).
// That the count may change between steps without changing any bit is tests/test_threads.cpp's.
#include <doctest/doctest.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <pthread.h>
#include <time.h>

#include <omp.h>
#include <stdlib.h>

#include <atomic>
#include <cmath>
#include <chrono>
#include <thread>
#include <vector>

#include "kernels/cpu/thread_governor.h"

using namespace anyk::cpu;

TEST_CASE("governor rule: bounds, dead band, and monotone in run delay and idle cores") {
  // The cases the rule is for: 2 threads beside one busy process on 2 cores wait about 0.67 cores
  // (3 runnable on 2 cores); 16 threads beside one wait about 16/17; an idle second core.
  CHECK(governed_threads(2, 2, {0.67, 0}) == 1);
  CHECK(governed_threads(16, 16, {16.0 / 17, 0}) == 15);
  CHECK(governed_threads(1, 2, {0, 0.95}) == 2);
  CHECK(governed_threads(2, 2, {0.05, 0}) == 2);  // idle machine, spinning team: stays
  CHECK(governed_threads(1, 2, {0, 0.4}) == 1);   // the other core mostly busy: stays
  CHECK(governed_threads(4, 16, {0, 5.0}) == 9);  // five idle cores: five more
  CHECK(governed_threads(1, 1, {3.0, 3.0}) == 1);
  for (int max : {1, 2, 3, 8, 17}) {
    for (int cur = 1; cur <= max; ++cur) {
      int prev_down = max, prev_up = 0;
      for (double x = 0; x <= 20; x += 0.05) {
        CAPTURE(max);
        CAPTURE(cur);
        CAPTURE(x);
        const int down = governed_threads(cur, max, {x, 0});
        const int up = governed_threads(cur, max, {0, x});
        CHECK(down >= 1);
        CHECK(down <= cur);  // delay never adds threads
        CHECK(up >= cur);    // idle never removes them
        CHECK(up <= max);
        CHECK(down <= prev_down);  // more delay: no more threads
        CHECK(up >= prev_up);      // more idle: no fewer
        prev_down = down;
        prev_up = up;
        if (x < 0.3) CHECK(down == cur);  // the dead band
        if (x < 0.7) CHECK(up == cur);
        if (x >= 0.3 && cur > 1) CHECK(down < cur);
        if (x >= 0.7 && cur < max) CHECK(up > cur);
      }
    }
  }
  // Out-of-range inputs are clamped, not trusted.
  CHECK(governed_threads(0, 4, {0, 0}) == 1);
  CHECK(governed_threads(9, 4, {0, 0}) == 4);
  CHECK(governed_threads(2, 0, {0, 5}) == 1);
}

namespace {

int gettid_() { return int(::syscall(SYS_gettid)); }

// n threads pinned to `cpu` for `seconds`, each spinning (busy) or sleeping. Returns their run
// delay over that time (seconds, summed, from the sensor) and, as an independent reference, their
// wall time minus their CPU time (pthread CPU clocks), summed: a thread that is runnable the whole
// time (a busy one) is either running or waiting, so the two agree.
struct Delay {
  double sensor = 0;
  double wall_minus_cpu = 0;
};
Delay delay_of(int n, int cpu, double seconds, bool busy) {
  std::atomic<int> ready{0};
  std::atomic<bool> stop{false};
  std::vector<int> tids(size_t(n), 0);
  std::vector<std::thread> ts;
  for (int i = 0; i < n; ++i)
    ts.emplace_back([&, i] {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpu, &set);
      ::sched_setaffinity(0, sizeof set, &set);
      tids[size_t(i)] = gettid_();
      ++ready;
      volatile uint64_t x = 0;
      if (!busy) stop.wait(false);  // asleep until the end: not runnable, so no run delay
      while (!stop.load()) x = x + 1;
    });
  while (ready.load() < n) std::this_thread::yield();
  auto cpu_seconds = [&] {
    double sum = 0;
    for (auto& t : ts) {
      clockid_t id;
      REQUIRE(pthread_getcpuclockid(t.native_handle(), &id) == 0);
      timespec v{};
      REQUIRE(clock_gettime(id, &v) == 0);
      sum += double(v.tv_sec) + 1e-9 * double(v.tv_nsec);
    }
    return sum;
  };
  using clk = std::chrono::steady_clock;
  const auto t0 = clk::now();
  const double d0 = run_delay_seconds(tids), c0 = cpu_seconds();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const auto t1 = clk::now();
  const double d1 = run_delay_seconds(tids), c1 = cpu_seconds();
  stop = true;
  stop.notify_all();
  for (auto& t : ts) t.join();
  REQUIRE(d0 >= 0);
  REQUIRE(d1 >= 0);
  const double wall = std::chrono::duration<double>(t1 - t0).count();
  return {d1 - d0, n * wall - (c1 - c0)};
}

int some_allowed_cpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) return c;
  FAIL("no allowed cpu");
  return 0;
}

}  // namespace

TEST_CASE("governor sensors: run delay counts waiting for a core, not sleeping") {
  if (::access("/proc/self/schedstat", R_OK) != 0) {
    MESSAGE("no /proc/self/schedstat here: the governor keeps its count fixed; nothing to check");
    return;
  }
  const int cpu = some_allowed_cpu();
  // Three busy threads on one core: they share it, so together they wait about twice the window,
  // and the sensor must agree with wall - CPU time (a sensor that read the running time, the
  // schedstat field before, would give about one window and fail here).
  const Delay three = delay_of(3, cpu, 0.4, true);
  CAPTURE(three.sensor);
  CAPTURE(three.wall_minus_cpu);
  CHECK(three.wall_minus_cpu >= 0.6);
  CHECK(std::abs(three.sensor - three.wall_minus_cpu) <= 0.05 + 0.05 * three.wall_minus_cpu);
  // Sleeping threads on that core wait for nothing, however busy the machine is.
  const Delay sleepers = delay_of(2, cpu, 0.4, false);
  CHECK(sleepers.sensor <= 0.05);
  // A thread id that is not ours: the sensor says it cannot read, not zero.
  CHECK(run_delay_seconds({-1}) < 0);
  CHECK(run_delay_seconds({}) == 0);
}

TEST_CASE("governor sensors: a core kept busy is not idle, and the sample reads this process") {
  if (::access("/proc/self/schedstat", R_OK) != 0) return;
  const int cpu = some_allowed_cpu();
  std::atomic<bool> stop{false};
  std::atomic<bool> pinned{false};
  std::thread busy([&] {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    ::sched_setaffinity(0, sizeof set, &set);
    pinned = true;
    volatile uint64_t x = 0;
    while (!stop.load()) x = x + 1;
  });
  while (!pinned.load()) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const double i0 = idle_seconds({cpu});
  const GovernorSample s0 = governor_sample();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const double i1 = idle_seconds({cpu});
  const GovernorSample s1 = governor_sample();
  stop = true;
  busy.join();
  REQUIRE(i0 >= 0);
  // Our thread held the core the whole 0.5 s: at most a clock tick or two of idle (10 ms each).
  CHECK(i1 - i0 <= 0.05);
  CHECK(i1 >= i0);
  CHECK(s0.ok);
  CHECK(s1.ok);
  CHECK(s1.delay_s >= s0.delay_s - 1e-9);
  // A cpu this machine does not have: unreadable, not zero.
  CHECK(idle_seconds({CPU_SETSIZE + 7}) < 0);
}

TEST_CASE("governor ticks: outside parallel regions they change the count, inside one (even inactive) never") {
  // The test hook steps the count down at every tick that takes a reading (from 1 back to the
  // maximum), without /proc. It is read once, at the first reading: no other case here ticks.
  ::setenv("ANYK_TEST_GOVERNOR_CYCLE", "1", 1);
  governor_configure(3, true);
  REQUIRE(governor_threads() == 3);
  REQUIRE(omp_get_max_threads() == 3);
  governor_tick();  // outside: 3 -> 2, and OpenMP's count follows
  CHECK(governor_threads() == 2);
  CHECK(omp_get_max_threads() == 2);
  int inside_count = -1, inside_omp = -1;
#pragma omp parallel if (false)
  {
    // An inactive region has its own copy of OpenMP's count: a change here would be lost at its
    // end while the governor believed it applied. The tick must leave both alone.
    governor_tick();
    inside_count = governor_threads();
    inside_omp = omp_get_max_threads();
  }
  CHECK(inside_count == 2);
  CHECK(inside_omp == 2);
  CHECK(governor_threads() == 2);
  CHECK(omp_get_max_threads() == 2);
#pragma omp parallel num_threads(2)
  {
#pragma omp master
    governor_tick();
  }
  CHECK(governor_threads() == 2);
  governor_tick();  // outside again: 2 -> 1
  CHECK(governor_threads() == 1);
  CHECK(omp_get_max_threads() == 1);
  governor_tick();  // and from 1 back to the maximum
  CHECK(governor_threads() == 3);
  CHECK(omp_get_max_threads() == 3);
  governor_configure(1, false);
  ::unsetenv("ANYK_TEST_GOVERNOR_CYCLE");
}

// The rule that picks the few-row decode grain (regions_cheap, kernels/cpu/parallel.h): libgomp's
// reading of OMP_WAIT_POLICY and GOMP_SPINCOUNT, both sides of every threshold.
TEST_CASE("wait policy: which settings spin between regions, as libgomp reads them") {
  using anyk::cpu::wait_policy_spins;
  // Neither set: libgomp's default spins (300000); the policy alone.
  CHECK(wait_policy_spins(nullptr, nullptr));
  CHECK(wait_policy_spins("active", nullptr));
  CHECK(wait_policy_spins("ACTIVE", nullptr));
  CHECK_FALSE(wait_policy_spins("passive", nullptr));
  CHECK_FALSE(wait_policy_spins("PASSIVE", nullptr));
  // A count decides, whatever the policy says; kSpinningCount is the boundary.
  CHECK(wait_policy_spins("passive", "100000"));  // anyk's launcher sets 100000
  CHECK(wait_policy_spins(nullptr, "10000"));
  CHECK_FALSE(wait_policy_spins(nullptr, "9999"));
  CHECK_FALSE(wait_policy_spins("active", "0"));
  CHECK(wait_policy_spins(nullptr, "infinite"));
  CHECK(wait_policy_spins("passive", "INFINITY"));
  // Suffixes multiply by 1000 each: 10k = 10000 spins, 9k does not reach it, 1M does.
  CHECK(wait_policy_spins(nullptr, "10k"));
  CHECK_FALSE(wait_policy_spins(nullptr, "9k"));
  CHECK(wait_policy_spins("passive", "1M"));
  CHECK_FALSE(wait_policy_spins("active", "0T"));
  // What libgomp ignores falls back to the policy.
  CHECK_FALSE(wait_policy_spins("passive", "lots"));
  CHECK(wait_policy_spins(nullptr, "-5"));
  CHECK_FALSE(wait_policy_spins("passive", "10x"));
  CHECK_FALSE(wait_policy_spins("passive", ""));
}
