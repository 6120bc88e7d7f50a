// The thread governor: how many OpenMP threads the CPU kernels use right now, between 1 and the
// thread rule's count (launch/threads.h), chosen from what the operating system says about the
// cores, so that 2 threads never run slower than 1 beside someone else's busy process while an
// idle machine gets every thread, spinning between parallel regions.
//
// Why: a thread that waits by spinning is the fastest way to start the next parallel region (on
// an idle 2-core machine spinning trains the quickstart model about 1.5x faster than sleeping at
// once, docs/threads.md), but beside a process that keeps a core busy the spinning threads and
// the static split of the work make 2 threads about half as fast as 1. No fixed wait policy is
// good in both places, so anyk spins and lets this governor drop threads while other processes
// hold the cores, and add them back when cores go idle.
//
// Ticks: the code that runs the kernels calls governor_tick at each layer of a forward pass
// (training, evaluation, decoding), each op of a backward pass, each evaluation batch and each
// product or row-chunked kernel that opens a parallel region (parallel.h); a tick costs a clock
// read unless a window has passed. Sensors (Linux /proc), read at most once per window (50 ms for
// run delay, 15 ms for the first reading after configure so that a command of a second sees a
// busy core within its first layer; 250 ms for idle cores):
//  - run delay: the time this process's threads spent runnable but not running (the second field
//    of /proc/self/task/*/schedstat), in cores: delay seconds / window seconds. Sleeping threads
//    add nothing, so a spinning or idle team reads about 0 on a machine it has to itself, and
//    about n * (1 - cores / runnable) when other work shares its cores.
//  - idle cores: the idle time of the cores this process may run on (sched_getaffinity; the cpuN
//    lines of /proc/stat), in cores.
// Rule (governed_threads, a pure function): delay >= 0.3 cores with more than one thread: give
// back round(delay) threads (at least one); else with fewer than the maximum and >= 0.7 idle
// cores: take floor(idle + 0.3) more (at least one), up to the maximum.
//
// Results do not depend on the thread count (kernels/cpu/parallel.h), so changing it between two
// units changes no bits. ANYK_ADAPTIVE_THREADS=0 keeps the rule's count fixed; without the /proc
// files the governor keeps it fixed too. ANYK_TEST_GOVERNOR_CYCLE=1 is for tests: the count steps
// down by one at every tick (from 1 back to the maximum), sensors unread.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace anyk::cpu {

// One window's reading.
struct GovernorReading {
  double delay_cores = 0;  // run delay of this process's threads / window length
  double idle_cores = 0;   // idle time of this process's allowed cores / window length
};

// The governor's rule: the thread count for the next window, in [1, max_threads].
int governed_threads(int current, int max_threads, const GovernorReading& r);

// Cumulative counters (seconds) since an arbitrary origin; a window's reading is the difference
// of two samples divided by the wall time between them. ok = false when /proc could not be read.
struct GovernorSample {
  bool ok = false;
  double delay_s = 0;  // summed run delay of every thread of this process
  double idle_s = 0;   // summed idle + iowait time of the allowed cores
};
GovernorSample governor_sample();
// The run delay, in seconds, of the given threads (Linux thread ids), summed; -1 when a
// thread's schedstat cannot be read. For tests: the same parser governor_sample uses.
double run_delay_seconds(const std::vector<int>& tids);
// The idle + iowait seconds of the given CPUs, summed (from /proc/stat); -1 when unreadable.
double idle_seconds(const std::vector<int>& cpus);

// Process-wide governor. configure: the rule's count and whether to adapt (also off when
// ANYK_ADAPTIVE_THREADS=0); sets OpenMP's count on the calling thread.
void governor_configure(int max_threads, bool adaptive);
// Between kernels, on the thread that runs them (inside a parallel region it does nothing): takes
// a reading when a window has passed, applies the rule, and sets OpenMP's thread count on the
// calling thread when it changed.
void governor_tick();
// The current count, and a summary for logs: the count's range and number of changes.
int governor_threads();
struct GovernorSummary {
  int max_threads = 1;
  bool adaptive = false;
  int min_used = 1;
  int64_t changes = 0;
};
GovernorSummary governor_summary();
// "adaptive: fewer threads while other processes hold this process's cores" or "fixed (...)".
std::string governor_mode_text();

// Whether libgomp's threads spin between parallel regions under these two variables (null: unset),
// read as libgomp reads them: GOMP_SPINCOUNT, when it is a count or "infinite"/"infinity", decides
// (spinning from kSpinningCount spins on, which recovered most of the idle speed in
// docs/threads.md's measurements; fewer count as sleeping); otherwise OMP_WAIT_POLICY: passive
// sleeps at once, active or unset spins (libgomp's default is 300000 spins). A pure function, for
// the tests.
constexpr long long kSpinningCount = 10000;
bool wait_policy_spins(const char* wait_policy, const char* spincount);
// Whether opening a parallel region is cheap now: this process's policy spins (its environment,
// read once; anyk's launcher sets GOMP_SPINCOUNT=100000 unless the governor is off or the command
// is `serve`, launch/main.cpp) and OpenMP's current count fits the CPUs this process may run on
// (with more threads than CPUs libgomp spins only 100-1000 times whatever was set). About 0.8 us
// per 2-thread region then, against 5-40 us when threads sleep (docs/threads.md, "Grain sizes").
// Under the adaptive governor also: a reading since configure showed a core to spare (at least
// 0.7 idle cores over at least 50 ms). Until then, and beside busy processes, the second thread
// is not asked into short regions: a spinning team beside a busy core slowed a 20 ms decode to
// 0.73-0.81x of 1 thread before the governor's first reading could drop it.
bool regions_cheap();

}  // namespace anyk::cpu
