// The thread rule (see threads.h).
#include "launch/threads.h"

#include <omp.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <thread>

#include "core/check.h"
#include "kernels/cpu/thread_governor.h"
#include "parallel/comm.h"

namespace anyk::launch {

namespace {

bool set(const char* v) { return v != nullptr && *v != '\0'; }

// A positive integer from the variable's value (OMP_NUM_THREADS's first list entry).
int positive(const char* name, const char* value, bool list) {
  std::string_view s(value);
  if (list) s = s.substr(0, s.find(','));
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  int n = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  ANYK_CHECK(ec == std::errc() && end == s.data() + s.size() && n >= 1 && n <= 4096,
             name << "='" << value << "' is not a thread count (a positive integer) hint: fix or unset " << name
                  << ", or pass --threads N");
  return n;
}

int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!set(v)) return 0;
  int n = 0;
  const auto [end, ec] = std::from_chars(v, v + std::strlen(v), n);
  return ec == std::errc() && n > 0 ? n : 0;
}

// Processes of this job on this node: the launcher's variable, else MPI's shared-memory split
// when MPI is up, else 1.
int ranks_on_node() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"})
    if (int n = env_int(name)) return n;
  return node_ranks();
}

bool is_rank0() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
    if (const char* v = std::getenv(name); set(v)) return std::strcmp(v, "0") == 0;
  return true;
}

}  // namespace

ThreadChoice thread_rule(int flag, const char* omp_env, const char* slurm_env, int cores_bound, int cores_node,
                         int ranks_on_node) {
  if (flag > 0) return {flag, "--threads"};
  if (set(omp_env)) return {positive("OMP_NUM_THREADS", omp_env, true), std::string("OMP_NUM_THREADS=") + omp_env};
  if (set(slurm_env))
    return {positive("SLURM_CPUS_PER_TASK", slurm_env, false), std::string("SLURM_CPUS_PER_TASK=") + slurm_env};
  cores_node = std::max(1, cores_node);
  cores_bound = std::clamp(cores_bound, 1, cores_node);
  if (cores_bound < cores_node)
    return {cores_bound, "the " + std::to_string(cores_bound) + " of this node's " + std::to_string(cores_node) +
                             " cores this process is bound to"};
  const int ranks = std::max(1, ranks_on_node);
  return {std::max(1, cores_node / ranks),
          "this node's " + std::to_string(cores_node) + " cores / " + std::to_string(ranks) + " rank" +
              (ranks == 1 ? "" : "s") + " on it"};
}

ThreadChoice resolve_threads(int flag) {
  const int node = int(std::max(1u, std::thread::hardware_concurrency()));
  return thread_rule(flag, std::getenv("OMP_NUM_THREADS"), std::getenv("SLURM_CPUS_PER_TASK"), omp_get_num_procs(),
                     node, flag > 0 ? 1 : ranks_on_node());
}

namespace {
ThreadChoice chosen;  // the last use_threads choice, for announce_threads
bool announced = false;
}  // namespace

int use_threads(int flag) {
  chosen = resolve_threads(flag);
  cpu::governor_configure(chosen.threads, true);  // sets OpenMP's count; adapts it at unit boundaries
  return chosen.threads;
}

std::string threads_line(const char* command) {
  return std::string("anyk ") + command + ": " + std::to_string(chosen.threads) + " thread" +
         (chosen.threads == 1 ? "" : "s") + " per process (" + chosen.source + ")" + cpu::governor_mode_text();
}

std::string threads_used() {
  const cpu::GovernorSummary g = cpu::governor_summary();
  std::string s = std::to_string(g.max_threads) + (g.max_threads == 1 ? " thread" : " threads");
  if (g.changes > 0)
    s += " (" + std::to_string(g.min_used) + " for a while: other processes held cores; " +
         std::to_string(g.changes) + (g.changes == 1 ? " change)" : " changes)");
  return s;
}

void announce_threads(const char* command, std::FILE* to) {
  if (announced || !is_rank0()) return;
  announced = true;
  std::fprintf(to, "%s\n", threads_line(command).c_str());
  std::fflush(to);
}

}  // namespace anyk::launch
