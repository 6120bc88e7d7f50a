// The memory a training run needs, estimated before anything is allocated, and the memory this
// node can give it (MemAvailable, or the cgroup's limit when that is lower). The trainer prints
// the estimate at start-up and refuses a run that cannot fit, naming the largest knob to lower.
#pragma once
#include <cstdint>
#include <string>

#include "launch/options.h"

namespace anyk::launch {

struct MemoryEstimate {
  double params = 0;       // this rank's parameters (f32): the dense ones and its experts
  double grads = 0;        // their gradients (f32, the same layout; more copies with --grad-accum)
  double moments = 0;      // this rank's AdamW m and v (2 x f32): all of them, or its block under --zero 1
  double activations = 0;  // the per-step arena: forward activations, their gradients, dispatch buffers
  double eval_copy = 0;    // rank 0's single-process copy of every expert (ep > 1 or top_p)
  double data = 0;         // the token shards held in memory
  int zero = 0;            // --zero: 1 when the moments are sharded
  int zero_ranks = 1;      // the world size: the dense moments' shard count under --zero 1
  bool recompute = false;  // activations estimated for --recompute layer (see estimate_train_memory)
  double total() const { return params + grads + moments + activations + eval_copy + data; }
  // "--batch", "--zero 1" or "--dim/--expert-hidden/--experts (or more ranks)": what to lower first.
  std::string largest_knob() const;
  // "1.23 GiB (parameters 25.6 MiB, gradients 25.6 MiB, AdamW moments 12.8 MiB (--zero 1: 1/4),
  //  activations 1.10 GiB, eval copy 0.0 MiB, data 20.1 MiB)"
  std::string describe() const;
};

// The estimate for one rank of a run with these (validated) options: P ranks, ep expert-parallel
// ranks, this rank is rank 0 or not, the shards hold `tokens` tokens. The activation term is an
// upper bound calibrated against the arena's measured high-water mark (tests/test_reliability).
// o.zero == 1 divides the dense moments by world and the expert moments by world / ep (each
// region's data-parallel group). `recompute_layers`: the activations of --recompute layer (only
// each layer's input kept, one layer's activations alive at a time). HOOK for --recompute (built
// on branch h/recompute): its caller passes o.recompute == "layer"; the formula is here already.
MemoryEstimate estimate_train_memory(const TrainOptions& o, int world, int ep, bool rank0, int64_t tokens,
                                     bool recompute_layers = false);

// Bytes this process may still allocate: MemAvailable from /proc/meminfo, lowered to what this
// process's cgroups allow (cgroup_headroom below) when that is smaller; ANYK_MEMORY_LIMIT
// (bytes) overrides both for tests. `source` says which applied. Negative when unknown.
double available_memory(std::string* source);

// The memory this process's cgroups still allow (limit - usage), the tightest over its own cgroup
// and every ancestor (a Slurm or systemd job's limit sits on a parent of the step's cgroup), for
// cgroup v2 (the "0::PATH" line; ROOT/PATH/memory.max, memory.current) and v1 (a line whose
// controllers include memory; ROOT/memory/PATH/memory.limit_in_bytes, memory.usage_in_bytes).
// proc_cgroup is the text of /proc/self/cgroup, root the cgroup mount (/sys/fs/cgroup); levels
// missing under root are skipped. -1 when no level sets a limit. `where` names the limit file.
double cgroup_headroom(const std::string& proc_cgroup, const std::string& root, std::string* where);

std::string gib(double bytes);  // "1.23 GiB", or "12.3 MiB" below 1 GiB

}  // namespace anyk::launch
