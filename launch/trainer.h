// The trainer of `anyk train`. A step reads like llm.c's: for each micro-batch, next batch
// (K per layer drawn from the schedule), forward on the tape (activations in the arena, loss
// normalised by the whole step's token count so the micro-batches' parameter gradients add up to
// the full-batch gradient), backward; then gradient sync, clipping of the global norm, AdamW; then
// the log line. Building the model, resuming, and the eval / save / stop decisions are methods.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "io/checkpoint.h"
#include "io/json.h"
#include "parallel/grad_tree.h"
#include "launch/memory.h"
#include "launch/options.h"
#include "launch/report.h"
#include "launch/rundir.h"
#include "model/k_schedule.h"
#include "model/lm.h"
#include "optim/adamw.h"
#include "parallel/comm.h"
#include "parallel/groups.h"
#include "runtime/arena.h"

namespace anyk::launch {

// Everything `anyk train` checked before any allocation or file (train.cpp).
struct TrainSetup {
  TrainOptions o;
  std::string config_ini;
  ModelConfig model;  // forced-K router (top_p = 0); the training copy sets top_p for top_p
  KScheduleConfig kcfg;
  LrSchedule lr;
  std::shared_ptr<const data::TokenShards> train_tokens, val_tokens;  // mapped shard files
  std::string resume_dir;  // non-empty when resuming: the resolved checkpoint directory
  io::CheckpointMeta resume;  // its meta.h5 attributes
  Device device = Device::CPU;  // --device, prepared by use_device (runtime/devices.h)
  std::string device_line;      // use_device's description, for the start-up lines
  double device_free = -1;      // the device's free memory in bytes (-1: host memory or unknown)
};

class Trainer {
 public:
  // Collective: checks memory, builds the model and optimizer, resumes, takes the run dir and
  // opens the log and metrics (rank 0). Every failure stops every rank with one message.
  Trainer(TrainSetup setup, const Comm& world);
  // Trains to --steps (or a stop request), then saves model.h5 and the K-sweep. Returns the exit code.
  int run();

 private:
  using clock = std::chrono::steady_clock;
  // Sums over the steps since the last log line, and one step's reduced statistics.
  struct Interval {
    double secs = 0, flops = 0, compute = 0, dispatch = 0, sync = 0, optim = 0;
    int64_t tokens = 0, steps = 0;
  };
  struct StepResult {
    double ce = 0, gnorm = 0, lr = 0, mean_k = 0, imbalance = 0;
    std::vector<double> k_first;  // realised K per layer of rank 0's first micro-batch
  };

  void check_memory();
  void build_model();
  void load_init_weights();
  void build_optimizer();
  void zero_checkpoint_refs(bool gather);  // --zero 1: checkpoint views for a save (gather) or resume
  void zero_drop_refs();                   // --zero 1: frees them and any gathered moments
  void resume();
  void take_run_dir();
  void open_outputs();
  void describe_run();
  std::string describe_k_strategy() const;
  void describe_resume_and_signals();

  bool step(int64_t s, StepResult& r);  // false: a stop request abandoned it
  void micro_batch(int64_t s, int a, StepResult& r);
  void update(int64_t s, StepResult& r);
  void step_stats(StepResult& r) const;
  void log_step(int64_t done, const StepResult& r);
  void eval(int64_t done);
  void save(int64_t done);
  int abandon(int64_t s);
  int after_step(int64_t done);  // -1: go on; otherwise the exit code
  void finish();
  const LM& eval_model();  // collective

  void say(const std::string& line);
  void warn(const std::string& line);  // "anyk: <line>" on stderr (and in train.log): warnings, notes
  void metric(const io::Json& j);
  void raise_io_error() const;

  TrainSetup p_;
  const TrainOptions& o_;
  const Comm& world_;
  const int P_, rank_;
  const bool root_;
  const Device dev_;  // parameters, gradients, moments, activations and the eval twin live here
  const int B_, T_, A_, L_, E_;
  KSchedule ks_;
  bool top_p_ = false, one_k_ = false;
  MemoryEstimate mem_;
  Comm node_;  // the ranks of this node, which share its memory
  double node_need_ = 0, mem_avail_ = -1;
  std::string mem_source_;
  ProcessGroups groups_;
  NodeGroups nodes_;  // must outlive disp_ (the hierarchical all-to-all uses its groups)
  std::unique_ptr<AllToAllDispatcher> disp_;
  LocalDispatcher full_disp_;
  std::unique_ptr<LM> lm_, eval_twin_;
  std::unique_ptr<AdamW> opt_;
  int opt_region_[kNumRegions] = {-1, -1};
  std::vector<io::TensorRef> ckpt_dense_;
  std::vector<io::ExpertRef> ckpt_experts_;
  io::RegionMoments zero_whole_[kNumRegions];  // --zero 1: whole moments during a save or resume
  int64_t step0_ = 0, pos0_ = 0;
  double resume_secs_ = 0;
  RunDirLock lock_;
  std::string moved_to_;
  LineSink out_;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> metrics_{nullptr, [](std::FILE* f) { return f ? std::fclose(f) : 0; }};
  // Rank 0's log and metrics writes can fail (a full disk) while the other ranks are on their way
  // to the next collective: the first such error is kept and every rank learns of it at the end
  // of the step (with the stop-signal all-reduce), so the job stops with one message, no abort.
  std::string io_error_;
  data::Loader loader_, val_;
  double core_flops_ = 0, peak_ = 0;
  Arena arena_;
  std::unique_ptr<Tape> tape_;
  std::vector<int> in_, tgt_;
  MicroBatchTree mb_tree_;   // --grad-accum > 1: the fixed-order sum over micro-batches
  std::vector<double> ce_parts_;  // this step's per-micro-batch losses
  std::vector<double> red_;  // per step, reduced in one call: [CE, assignments (L), counts (L*E)]
  Interval iv_;
};

// Fault injection for the tests of failure handling: ANYK_FAULT_INJECT="rank:step" makes that
// rank fail with an error at that step (1-based), as a bad file or a dead node would.
void maybe_inject_fault(int rank, int64_t step);

}  // namespace anyk::launch
