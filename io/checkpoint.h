// Sharded HDF5 checkpoints (format: docs/checkpoint-format.md). A checkpoint is a directory
// step_<n>/ with meta.h5 (config, step, seed, loader position, AdamW step count, dense parameters
// and their moments) and experts_<r>.h5 per expert-parallel rank r (its experts and their
// moments, each under its global expert id, so any other ep can load it). The trainer writes
// into step_<n>.tmp/, renames it after every rank has finished and then replaces `latest`.
// All RNG in anyk is counter-based (keyed by seed, step, micro-batch, layer, sample index), so
// (seed, step) is the complete RNG state.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/h5.h"
#include "model/config.h"
#include "optim/adamw.h"
#include "parallel/groups.h"
#include "runtime/params.h"

namespace anyk::io {

constexpr int64_t kCheckpointVersion = 1;

// Everything a checkpoint records besides tensors.
struct CheckpointMeta {
  int64_t step = 0;             // optimizer steps done
  int64_t seed = 0;             // keys init, data windows and K draws
  int64_t loader_position = 0;  // next global sample index (step * global_seqs without layout changes)
  int64_t global_seqs = 0;      // sequences per optimizer step (B * A * world)
  int64_t adam_step = 0;        // AdamW bias-correction step count
  int64_t world_size = 1, ep_size = 1;  // the layout that wrote it (E_local = experts / ep_size)
  int64_t micro_batch = 0;      // sequences per micro-batch (--batch): K is drawn per micro-batch of
                                // this size, so a resume with another value changes the K draws
                                // (0: written by an older anyk, unknown)
  ModelConfig model;
  std::string config_ini;       // the run's resolved options (INI)
  std::string train_shards;     // "name tokens" per training shard (data::TokenShards::describe);
                                // empty: written by an older anyk, unknown
};

// A view of one float32 tensor and its AdamW moments; m and v are null when the optimizer state
// is not wanted (reading) or not there (writing --no-optimizer files). The pointers are in the
// memory of `device`: off the CPU, the files are written and read through the copy ops
// (runtime/device.h), byte for byte the same datasets as from host memory.
struct TensorRef {
  std::string name;            // ParamStore name, e.g. "layers.0.attn.wqkv"
  std::vector<int64_t> shape;  // shape of this tensor (one expert's slice for ExpertRef)
  float* value = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  Device device = Device::CPU;
  bool host_moments = false;  // m and v are in host memory whatever `device` is (--zero 1's whole moments)
  // Reading only (--zero 1's resume): when moments_to >= 0, m and v receive just the tensor's
  // elements [moments_from, moments_to) (this rank's block); the rest is read and dropped.
  int64_t moments_from = 0, moments_to = -1;
};

// One expert's slice of an expert parameter: name "layers.0.moe.experts.w13", shape (2H, C).
struct ExpertRef {
  int expert = 0;  // global expert id
  TensorRef t;
};

// --- paths -----------------------------------------------------------------------------------
std::string checkpoints_dir(const std::string& run_dir);  // run_dir/checkpoints
std::string step_dir_name(int64_t step);                  // "step_<n>"
// DIR (a step directory), a `latest` file, or the word "latest" (run_dir/checkpoints/latest) ->
// the step directory. Throws naming what is missing.
std::string resolve_checkpoint(const std::string& spec, const std::string& run_dir);

// --- views of a live model -------------------------------------------------------------------
// Dense parameters with their moments (AdamW region `dense_region`; opt may be null: no moments).
std::vector<TensorRef> dense_refs(ParamStore& ps, AdamW* opt, int dense_region);
// Local expert slices, global id = first_expert + local index; opt may be null.
std::vector<ExpertRef> expert_refs(ParamStore& ps, AdamW* opt, int expert_region, int first_expert);

// --zero 1: the optimizer holds only this rank's block of each region's moments, a checkpoint the
// whole region's (so it resumes into any layout, with or without --zero). RegionMoments is one
// region's m and v in host memory (empty where not needed).
struct RegionMoments {
  std::vector<float> m, v;
};
// Collective over `group`, the region's data-parallel group (world for dense, edp for experts;
// the blocks are block_range(n, group.size(), rank)): AdamW region `region` holds this rank's
// block; rank 0 of the group gets the whole (n) moments, the others an empty RegionMoments.
RegionMoments gather_moments(const AdamW& opt, int region, int64_t n, const Comm& group);
// Saving: the views above with the moments in whole-region host buffers (m, v of region_numel
// values, or empty on the ranks that do not write them).
std::vector<TensorRef> dense_refs(ParamStore& ps, RegionMoments& whole);
std::vector<ExpertRef> expert_refs(ParamStore& ps, RegionMoments& whole, int first_expert);
// Resuming: the views for reading, with each tensor's moments cut to the part inside block b of
// its region, which AdamW region `region` holds (moments_from/to; a tensor outside b reads none),
// so a rank never holds more than one tensor's whole moments (the read's staging).
std::vector<TensorRef> dense_refs(ParamStore& ps, AdamW& opt, int region, BlockRange b);
std::vector<ExpertRef> expert_refs(ParamStore& ps, AdamW& opt, int region, BlockRange b, int first_expert);

// --- single files ----------------------------------------------------------------------------
// meta.h5: attributes of meta, /params, and when the refs have moments /adam_m and /adam_v.
// The run-state attributes of a CheckpointMeta (step, seed, loader_position, global_seqs,
// adam_step, world_size, ep_size, config_ini): written and read the same way by meta.h5 and by
// consolidated files.
void write_run_state_attrs(hid_t f, const std::string& path, const CheckpointMeta& meta);
void read_run_state_attrs(hid_t f, const std::string& path, CheckpointMeta& meta);

void write_meta_file(const std::string& path, const CheckpointMeta& meta, const std::vector<TensorRef>& dense);
// experts_<r>.h5: /experts/<id>/{params,adam_m,adam_v}/<name> for every ref.
void write_experts_file(const std::string& path, const CheckpointMeta& meta, int ep_rank,
                        const std::vector<ExpertRef>& experts);

// The attributes of dir/meta.h5 (format, version and every field checked), after checking that
// every experts_<r>.h5 shard it needs exists.
CheckpointMeta read_checkpoint_meta(const std::string& dir);
// Reads the refs (values, and moments where m/v are non-null) from dir: dense ones from meta.h5,
// experts by global id from whichever shard holds them. Every dataset's shape and CRC-32 are
// checked; shards are checked to belong to the same checkpoint. `progress` (may be empty) is
// called after each tensor with (done, total).
void read_checkpoint_tensors(const std::string& dir, const CheckpointMeta& meta, const std::vector<TensorRef>& dense,
                             const std::vector<ExpertRef>& experts,
                             const std::function<void(int64_t, int64_t)>& progress = {});

// --- the trainer's collective save -----------------------------------------------------------
// Collective over g.world. Rank 0 writes meta.h5, the ranks of the first expert-data-parallel
// replica (world ranks < ep) write experts_<ep rank>.h5, all into run_dir/checkpoints/
// step_<n>.tmp/; after a barrier rank 0 renames it to step_<n>, replaces `latest` (latest.tmp +
// rename), deletes complete checkpoints beyond the newest `keep` and stale *.tmp directories.
// Returns the bytes written by this rank. ANYK_FAULT_INJECT_SAVE=<step> makes rank 0 _exit(9)
// after writing meta.h5 of that step's save (for the kill-mid-save test);
// ANYK_FAULT_INJECT_PRUNE=<step> makes it _exit(9) in that save's pruning, after renaming a
// doomed checkpoint to step_<n>.del.tmp and before deleting it (for the kill-mid-prune test).
int64_t save_checkpoint(const ProcessGroups& g, const std::string& run_dir, const CheckpointMeta& meta,
                        const std::vector<TensorRef>& dense, const std::vector<ExpertRef>& experts, int keep);

}  // namespace anyk::io
