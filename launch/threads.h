// The thread rule shared by every command (train, eval, generate, convert): --threads N, else
// OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK, else this node's cores divided among the ranks on it
// (OMPI_COMM_WORLD_LOCAL_SIZE / MPI_LOCALNRANKS, else MPI's shared-memory split, else 1). When the
// process is bound to fewer cores than the node has (mpirun --bind-to core, taskset), those cores
// are its share and are not divided again. The choice is printed, one line, by rank 0, once the
// command has checked its input (see announce_threads).
#pragma once
#include <cstdio>
#include <string>

namespace anyk::launch {

// The --threads help text of every command.
inline constexpr const char* kThreadsHelp =
    "threads per process (0 = the rule: OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK, else this node's "
    "cores / its ranks); the choice is printed in one line at start. Fewer run while other processes hold "
    "the cores (ANYK_ADAPTIVE_THREADS=0 keeps the count fixed; docs/threads.md)";

struct ThreadChoice {
  int threads = 1;
  std::string source;  // why, e.g. "--threads", "OMP_NUM_THREADS=2", "2 cores / 2 ranks on this node"
};

// The rule, a pure function. flag: --threads (0 = not given). omp_env, slurm_env: the variables'
// values (null = unset; an empty value counts as unset). cores_bound: the cores this process may
// run on; cores_node: the node's cores; ranks_on_node: processes of this job on the node.
// A variable that is not a positive integer (OMP_NUM_THREADS may be a list: its first entry
// counts) is refused with an error naming it and the fix.
ThreadChoice thread_rule(int flag, const char* omp_env, const char* slurm_env, int cores_bound, int cores_node,
                         int ranks_on_node);

// The rule applied to this process (its environment, cores and ranks on the node).
ThreadChoice resolve_threads(int flag);

// resolve_threads, then OpenMP's thread count set to it; returns the count. Silent: the choice is
// printed by announce_threads once the command's checks have passed (bad input stays one line).
int use_threads(int flag);
// The line "anyk <command>: N threads per process (<source>)".
std::string threads_line(const char* command);
// The threads a command used, for its closing summary: "2 threads", or with the governor's
// changes "2 threads (1 for a while: other processes held cores; 3 changes)".
std::string threads_used();
// threads_line on `to` (rank 0 only, once). stdout for train, eval and convert (their stderr holds
// errors only, one line); stderr for generate, whose stdout is the text.
void announce_threads(const char* command, std::FILE* to);

}  // namespace anyk::launch
