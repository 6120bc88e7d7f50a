// The trainer; see trainer.h.
#include "launch/trainer.h"
#include "launch/threads.h"

#include <omp.h>

#include <cmath>
#include <cstdarg>
#include <cstring>
#include <filesystem>

#include "eval/evaluate.h"
#include "io/fsio.h"
#include "kernels/cpu/thread_governor.h"
#include "io/hf.h"
#include "io/weights.h"
#include "launch/signals.h"
#include "parallel/gather.h"
#include "parallel/grad_sync.h"
#include "core/check.h"
#include "runtime/devices.h"

namespace anyk::launch {

namespace fs = std::filesystem;

namespace {

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

void copy_params(const LM& from, LM& to) {
  for (Region r : {Region::Dense, Region::Expert}) {
    ANYK_CHECK(from.params().region_numel(r) == to.params().region_numel(r), "parameter layouts differ");
    copy(to.params().region_value(r), from.params().region_value(r));  // any devices
  }
}

// gather_full_params (parallel/gather) for parameters in device memory: staged through the host.
void gather_full_staged(const ParamStore& local, ParamStore* full, const Comm& ep) {
  const bool root = ep.rank() == 0;
  for (int id = 0; id < local.size(); ++id) {
    const ParamInfo& info = local.info(id);
    const std::vector<float> src = to_host_vector<float>(local.value(id));
    Tensor dst;
    if (root) {
      const int fid = full->find(info.name);
      ANYK_CHECK(fid >= 0, "gather: '" << info.name << "' missing from the full model");
      dst = full->value(fid);
      const int64_t want = int64_t(src.size()) * (info.region == Region::Expert ? ep.size() : 1);
      ANYK_CHECK(dst.numel() == want, "gather: '" << info.name << "' has " << dst.numel() << " values, expected " << want);
    }
    if (info.region == Region::Dense) {
      if (root) from_host(dst, src.data());
      continue;
    }
    std::vector<float> all(root ? size_t(dst.numel()) : 0);
    ep.gather(src.data(), int64_t(src.size()), root ? all.data() : nullptr, 0);  // (E_local,...) x ep -> (E,...)
    if (root) from_host(dst, all.data());
  }
}

std::vector<ParamSpan> spans_of(const ParamStore& ps, Region r) {
  std::vector<ParamSpan> s;
  for (const ParamInfo& i : ps.infos())
    if (i.region == r) s.push_back(ParamSpan{i.offset, i.shape.numel(), i.decay});
  return s;
}

double secs(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

void maybe_inject_fault(int rank, int64_t step) {
  const char* spec = std::getenv("ANYK_FAULT_INJECT");
  if (!spec) return;
  int r = -1;
  long long st = -1;
  if (std::sscanf(spec, "%d:%lld", &r, &st) == 2 && r == rank && st == step)
    ANYK_FAIL("injected fault on rank " << rank << " at step " << step << " (ANYK_FAULT_INJECT)");
}

Trainer::Trainer(TrainSetup setup, const Comm& world)
    : p_(std::move(setup)),
      o_(p_.o),
      world_(world),
      P_(world.size()),
      rank_(world.rank()),
      root_(rank_ == 0),
      dev_(p_.device),
      B_(o_.batch),
      T_(o_.seq_len),
      A_(o_.grad_accum),
      L_(o_.layers),
      E_(o_.experts),
      ks_(p_.kcfg, L_, E_),
      full_disp_(E_),
      loader_(p_.train_tokens, T_, uint64_t(o_.seed)),
      val_(p_.val_tokens, T_, uint64_t(o_.seed)),
      arena_(size_t(64) << 20, dev_) {
  top_p_ = ks_.per_token();
  one_k_ = p_.kcfg.strategy == KStrategy::Fixed || p_.kcfg.strategy == KStrategy::EMoE;
  check_memory();
  omp_set_num_threads(o_.threads);
  build_model();
  build_optimizer();
  resume();
  take_run_dir();
  open_outputs();
  if (!moved_to_.empty()) say("anyk: --overwrite: the previous run in " + o_.run_dir + " was moved to " + moved_to_);
  lm_->params().zero_grad();
  if (dev_ != Device::CUDA) {  // the CPU kernels (the checked device runs them too)
    core_flops_ = world_.all_reduce_max(measure_sgemm_flops_single_core());  // best rank
    peak_ = core_flops_ * o_.threads * P_;
  }
  say(threads_line("train"));  // stdout and train.log: stderr holds errors only
  describe_run();
  describe_resume_and_signals();
  tape_ = std::make_unique<Tape>(arena_);
  if (parse_bf16(o_.precision)) tape_->set_activation_storage(DType::BF16);
  in_.resize(size_t(B_) * T_);
  tgt_.resize(size_t(B_) * T_);
  red_.resize(1 + L_ + size_t(L_) * E_);
}

// Every rank's estimate against the memory of its node, before any allocation.
void Trainer::check_memory() {
  // Mapped shards live in the page cache, not in this rank's memory: only arrays held count.
  const int64_t shard_tokens = (p_.train_tokens->resident_bytes() + p_.val_tokens->resident_bytes()) / 2;
  mem_ = estimate_train_memory(o_, P_, o_.ep, root_, shard_tokens, o_.recompute == "layer");
  MPI_Comm c = MPI_COMM_NULL;
  ANYK_MPI_CHECK(MPI_Comm_split_type(world_.raw(), MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &c));
  node_ = Comm(c, true);
  // On a GPU only the shards stay in host memory; the rest must fit the GPU's free memory.
  const double on_device = dev_ == Device::CUDA ? mem_.total() - mem_.data : 0;
  agree_or_throw(world_, [&] {
    if (p_.device_free < 0 || on_device <= p_.device_free) return;
    ANYK_FAIL("not enough GPU memory: rank " << rank_ << " needs about " << gib(on_device) << " on its GPU ("
                                             << mem_.describe() << ") but " << gib(p_.device_free)
                                             << " is free hint: " << mem_.largest_knob());
  });
  node_need_ = node_.all_reduce_sum(mem_.total() - on_device);
  mem_avail_ = available_memory(&mem_source_);
  agree_or_throw(world_, [&] {
    if (node_.rank() != 0 || mem_avail_ < 0 || node_need_ <= mem_avail_) return;
    ANYK_FAIL("not enough memory: this run needs about " << gib(node_need_) << " on this node (" << node_.size()
                                                         << " rank(s); rank " << rank_ << ": " << mem_.describe()
                                                         << ") but " << gib(mem_avail_) << " is available ("
                                                         << mem_source_ << ") hint: " << mem_.largest_knob());
  });
}

// Allocation failures name what was being allocated (the estimate should prevent them).
#define ANYK_OOM(what, bytes)                                                                             \
  ANYK_FAIL("out of memory allocating " << what << " (" << gib(bytes) << "; the run's estimate is "     \
                                        << mem_.describe() << ") hint: " << mem_.largest_knob())

// The dispatcher (local or over the ep group), the training model, the weights it starts from,
// and rank 0's single-process evaluation twin where one is needed.
void Trainer::build_model() {
  ModelConfig train_cfg = p_.model;
  if (top_p_) {
    train_cfg.router.top_p = o_.top_p;
    train_cfg.router.k_min = o_.k_min;
  }
  // world = ep x edp; experts split over the ep group, replicated over edp. --comm nccl: the
  // rows and gradients travel over NCCL communicators on these groups.
  groups_ = make_groups(Comm::world(), o_.ep, E_, parse_comm(o_.comm));
  // --a2a hier: nodes_ holds this node's ep ranks and the same local index on every node.
  disp_ = make_dispatcher(groups_, E_, parse_a2a(o_.a2a), &nodes_);
  try {
    lm_ = std::make_unique<LM>(train_cfg, *disp_, dev_);
  } catch (const std::bad_alloc&) {
    ANYK_OOM("the parameters and gradients", mem_.params + mem_.grads);
  }
  lm_->set_recompute(parse_recompute(o_.recompute));
  lm_->init(uint64_t(o_.seed));
  if (!o_.init_weights.empty()) load_init_weights();
  // Evaluation and saving use a single-process copy with every expert, on rank 0: under expert
  // parallelism the experts are gathered into it, and evaluation always forces K (a top_p
  // router differs), so a twin is needed in those cases.
  if (top_p_ || groups_.ep_size > 1) {
    try {
      eval_twin_ = std::make_unique<LM>(p_.model, full_disp_, dev_);
    } catch (const std::bad_alloc&) {
      ANYK_OOM("the single-process evaluation copy of the model", mem_.eval_copy * 2);
    }
  }
}

// Every rank reads the whole file into a single-process model, then keeps its own experts.
void Trainer::load_init_weights() {
  LocalDispatcher one(E_);
  LM full(p_.model, one);
  if (io::is_hf_dir(o_.init_weights))
    io::load_hf_weights(o_.init_weights, full);
  else
    io::load_weights(o_.init_weights, full);
  LM& lm = *lm_;
  for (int id = 0; id < lm.params().size(); ++id) {
    const ParamInfo& info = lm.params().info(id);
    Tensor dst = lm.params().value(id), src = full.params().value(full.params().find(info.name));
    int64_t offset = info.region == Region::Expert ? int64_t(disp_->first_expert()) * (dst.numel() / dst.shape[0]) : 0;
    from_host(dst, src.ptr<float>() + offset);  // dst may be device memory
  }
}

void Trainer::build_optimizer() {
  ParamStore& ps = lm_->params();
  opt_ = std::make_unique<AdamW>(AdamWConfig{o_.lr, 0.9, 0.95, 1e-8, o_.weight_decay}, ps.device());
  for (Region r : {Region::Dense, Region::Expert}) {
    int64_t n = ps.region_numel(r);
    if (n == 0) continue;
    // --zero 1: AdamW sees only this rank's block of the region (its moments are the block's).
    const BlockRange b = o_.zero ? zero_block(ps, groups_, r) : BlockRange{0, n};
    try {
      opt_region_[int(r)] = opt_->add_region(static_cast<float*>(ps.region_data(r)) + b.begin,
                                             static_cast<const float*>(ps.region_grad(r)) + b.begin, b.size(),
                                             clip_spans(spans_of(ps, r), b.begin, b.end));
    } catch (const std::bad_alloc&) {
      ANYK_OOM("the AdamW moments", 8.0 * double(b.size()));
    }
  }
  // Views of this rank's parameters and moments, for saving and resuming (--zero 1: made per
  // save or resume over whole moments, zero_checkpoint_refs).
  if (o_.zero) return;
  ckpt_dense_ = io::dense_refs(ps, opt_.get(), opt_region_[int(Region::Dense)]);
  ckpt_experts_ = io::expert_refs(ps, opt_.get(), opt_region_[int(Region::Expert)], disp_->first_expert());
}

// --zero 1: a checkpoint holds whole moments, so it resumes into any layout with or without
// --zero. Saving (gather): each region's writer (world rank 0 for dense, the first replica's
// ranks for experts: rank 0 of each edp group) gathers them from its group into host memory
// for the save (freed by zero_drop_refs); resuming: every rank reads each tensor's moments and
// keeps the part in its block.
void Trainer::zero_checkpoint_refs(bool gather) {
  ParamStore& ps = lm_->params();
  const int d = opt_region_[int(Region::Dense)], e = opt_region_[int(Region::Expert)];
  if (!gather) {
    ckpt_dense_ = io::dense_refs(ps, *opt_, d, zero_block(ps, groups_, Region::Dense));
    ckpt_experts_ = io::expert_refs(ps, *opt_, e, zero_block(ps, groups_, Region::Expert), disp_->first_expert());
    return;
  }
  for (Region r : {Region::Dense, Region::Expert})
    zero_whole_[int(r)] = io::gather_moments(*opt_, opt_region_[int(r)], ps.region_numel(r),
                                             r == Region::Dense ? groups_.world : groups_.edp);
  ckpt_dense_ = io::dense_refs(ps, zero_whole_[int(Region::Dense)]);
  ckpt_experts_ = io::expert_refs(ps, zero_whole_[int(Region::Expert)], disp_->first_expert());
}

void Trainer::zero_drop_refs() {
  zero_whole_[0] = zero_whole_[1] = io::RegionMoments{};  // freed
  ckpt_dense_.clear();
  ckpt_experts_.clear();
}

#undef ANYK_OOM

// Where the run starts: step 0 and sample 0, or the checkpoint's step and loader position.
// Step s reads global samples [pos0 + (s - step0) * global_seqs, ...), so a resume into a
// layout with another global batch still continues the sample stream where it stopped.
// The checkpoint is read (every checksum verified) before any file is written.
void Trainer::resume() {
  if (p_.resume_dir.empty()) return;
  const auto tr = clock::now();
  if (o_.zero) zero_checkpoint_refs(false);
  io::read_checkpoint_tensors(p_.resume_dir, p_.resume, ckpt_dense_, ckpt_experts_);
  if (o_.zero) zero_drop_refs();
  opt_->set_step_count(p_.resume.adam_step);
  step0_ = p_.resume.step;
  pos0_ = p_.resume.loader_position;
  resume_secs_ = secs(tr, clock::now());
}

// Everything is valid and every rank has accepted the checkpoint. Rank 0 takes the run dir:
// moves an old run aside (--overwrite), creates the dir and locks it for the run's life (the
// kernel drops the lock however the process ends); a second run on the same dir fails here.
void Trainer::take_run_dir() {
  const bool resuming = !p_.resume_dir.empty();
  agree_or_throw(world_, [&] {
    if (!root_) return;
    if (o_.overwrite && !run_files(o_.run_dir).empty()) {
      RunDirLock old_run(o_.run_dir);  // never move a run that is still being written
      moved_to_ = move_run_aside(o_.run_dir);
    }
    std::error_code ec;
    fs::create_directories(o_.run_dir, ec);
    if (ec) io::fail_io("creating directory", o_.run_dir, ec.value(), io::kCheckpointSpaceHint);
    lock_ = RunDirLock(o_.run_dir);
    if (!resuming) {  // re-checked under the lock: another run may have started meanwhile
      const std::vector<std::string> found = run_files(o_.run_dir);
      ANYK_CHECK(found.empty(), "--run-dir " << o_.run_dir << " already holds a run (" << found[0]
                                             << ") hint: pass --resume latest to continue it, --overwrite to move "
                                                "it aside, or choose another --run-dir");
    }
  });
}

// From here on files are written (by rank 0 only). A resumed run appends to metrics.jsonl
// (entries carry their step) and keeps the earlier train.log as train.log.<i>.
void Trainer::open_outputs() {
  if (!root_) return;
  io::write_file_atomic(o_.run_dir + "/config.ini", p_.config_ini, io::kCheckpointSpaceHint);
  // The SentencePiece model travels with the run (generate, eval and convert look here first).
  if (!o_.tokenizer.empty()) {
    std::error_code ec;
    const std::string dst = o_.run_dir + "/tokenizer.model";
    if (!fs::equivalent(o_.tokenizer, dst, ec)) fs::copy_file(o_.tokenizer, dst, fs::copy_options::overwrite_existing);
  }
  const bool resuming = !p_.resume_dir.empty();
  const fs::path log = fs::path(o_.run_dir) / "train.log";
  if (resuming && fs::exists(log)) {
    int i = 1;
    while (fs::exists(log.string() + "." + std::to_string(i))) ++i;
    fs::rename(log, log.string() + "." + std::to_string(i));
  }
  out_.open_log(log.string());
  const std::string path = o_.run_dir + "/metrics.jsonl";
  metrics_.reset(std::fopen(path.c_str(), resuming ? "a" : "w"));
  if (!metrics_) io::fail_io("writing", path, errno, io::kCheckpointSpaceHint);
}

void Trainer::describe_run() {
  const LM& lm = *lm_;
  const int k_lo = one_k_ ? o_.k : o_.k_min;
  const int k_hi = one_k_ ? o_.k : o_.k_max;
  say("anyk train: " + lm.config().summary() +
      fmt(" | active params/token: %lld at K=%d, %lld at K=%d", (long long)lm.config().active_params(k_lo), k_lo,
          (long long)lm.config().active_params(k_hi), k_hi));
  const int nsh = p_.train_tokens->num_shards(), nvsh = p_.val_tokens->num_shards();
  const std::string in_shards = nsh + nvsh > 2 ? fmt(" (%d + %d shards, mapped)", nsh, nvsh) : std::string();
  say(fmt("data: %lld train / %lld val tokens from %s%s; B=%d T=%d A=%d x %d ranks (%d tokens/step), %lld steps",
          (long long)p_.train_tokens->num_tokens(), (long long)p_.val_tokens->num_tokens(), o_.data.c_str(),
          in_shards.c_str(), B_, T_, A_, P_, B_ * T_ * A_ * P_,
          (long long)o_.steps));
  say(fmt("layout: %d ranks = ep %d x edp %d, %d experts per rank, %d threads per rank%s", P_, groups_.ep_size,
          groups_.edp_size, disp_->num_local(), o_.threads,
          parse_comm(o_.comm) == CommKind::Nccl ? "; rows and gradients over NCCL, counts over MPI" : ""));
  say(fmt("K strategy %s: %s; seed %lld", o_.k_strategy.c_str(), describe_k_strategy().c_str(), (long long)o_.seed));
  // The top expert always holds at least 1/E of the mass, so p <= 1/E never adds a second expert.
  if (p_.kcfg.strategy == KStrategy::TopP && o_.top_p <= 1.0 / E_ && o_.k_min < o_.k_max)
    warn(fmt("warning: --expert-top-p %g <= 1/experts = %g: the top expert alone always reaches it, so every token "
            "uses --k-min %d experts (the same as --k-strategy fixed --k %d); raise --expert-top-p above %g",
            o_.top_p, 1.0 / E_, o_.k_min, o_.k_min, 1.0 / E_));
  say("device: " + p_.device_line + (dev_ == Device::CUDA && P_ > 1 ? " (rank 0)" : ""));
  if (lm.recompute() == Recompute::Layer)
    say("recompute: layer: each layer keeps its input and output; its forward runs again in the backward "
        "(the step arena holds one layer's activations at a time; the step lines give its high-water mark)");
  if (peak_ > 0)
    say(fmt("peak: %d ranks x %d threads x %.1f GFLOP/s (single-core 512^3 SGEMM) = %.1f GFLOP/s", P_, o_.threads,
            core_flops_ * 1e-9, peak_ * 1e-9));
  if (!p_.resume_dir.empty())
    say(fmt("resumed from %s: step %lld, sample %lld, saved by %lld ranks with ep %lld (%.2f s)",
            p_.resume_dir.c_str(), (long long)step0_, (long long)pos0_, (long long)p_.resume.world_size,
            (long long)p_.resume.ep_size, resume_secs_));
  // The moments AdamW allocated on each rank (its buffers' sizes), smallest and largest over ranks.
  double mb[kNumRegions] = {0, 0};
  for (int g = 0; g < kNumRegions; ++g)
    if (opt_region_[g] >= 0) mb[g] = double(opt_->moment_bytes(opt_region_[g]));
  const double d_hi = world_.all_reduce_max(mb[0]), d_lo = -world_.all_reduce_max(-mb[0]);
  const double e_hi = world_.all_reduce_max(mb[1]), e_lo = -world_.all_reduce_max(-mb[1]);
  const std::string how = o_.zero ? fmt("--zero 1: dense moments in %d block(s), one per rank; experts' in %d", P_,
                                        groups_.edp_size)
                                  : std::string("every rank holds its parameters' moments whole");
  say(fmt("optimizer: AdamW moments allocated per rank: dense %.0f..%.0f bytes, experts %.0f..%.0f bytes (%s)", d_lo,
          d_hi, e_lo, e_hi, how.c_str()));
  say("memory: estimate " + mem_.describe() + " on rank 0; " + gib(node_need_) + " for the " +
      std::to_string(node_.size()) + " rank(s) on its node; " +
      (mem_avail_ >= 0 ? gib(mem_avail_) + " available (" + mem_source_ + ")" : std::string("available unknown")));
}

std::string Trainer::describe_k_strategy() const {
  switch (p_.kcfg.strategy) {
    case KStrategy::Fixed: return fmt("K=%d", o_.k);
    case KStrategy::TopP: return fmt("p=%g, per-token K in [%d,%d]", o_.top_p, o_.k_min, o_.k_max);
    case KStrategy::EMoE:
      return fmt("k_train=%d from a per-token pool of U[%d,%d] top experts, router KL weight %g", o_.k, o_.k,
                 ks_.k_ideal(), o_.router_kl_weight);
    default: return fmt("K in [%d,%d]", o_.k_min, o_.k_max);
  }
}

void Trainer::describe_resume_and_signals() {
  if (!p_.resume_dir.empty()) {
    // K is drawn per global micro-batch of --batch sequences: another micro-batch size or count
    // per step gives another K sequence, so the run continues, but not as the uninterrupted
    // run would have.
    const int64_t ck_b = p_.resume.micro_batch, ck_m = ck_b > 0 ? p_.resume.global_seqs / ck_b : 0;
    if (ck_b > 0 && (ck_b != B_ || ck_m != int64_t(A_) * P_))
      warn(fmt("warning: the checkpoint was written with micro-batches of --batch %lld, %lld per step (--grad-accum "
              "x ranks); this run uses --batch %d, %d per step. K is drawn per global micro-batch, so the K draws "
              "and losses will differ from an uninterrupted run; resume with --batch %lld and --grad-accum x ranks "
              "= %lld to continue it exactly",
              (long long)ck_b, (long long)ck_m, B_, A_ * P_, (long long)ck_b, (long long)ck_m));
  }
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
    // mpirun sends SIGTERM to the ranks only after odls_base_sigkill_timeout seconds and SIGKILL
    // the same time later: with the default of 1 s no step or checkpoint can finish.
    const char* kd = std::getenv("OMPI_MCA_odls_base_sigkill_timeout");
    if (!kd || std::atoi(kd) < 10)
      warn("note: under mpirun a SIGTERM or Ctrl-C gives the ranks " + std::string(kd ? kd : "1") +
          " s before SIGKILL, too little to write a checkpoint; run mpirun --mca odls_base_sigkill_timeout 60 "
          "(more than a step plus a save) so that a signal ends with a checkpoint (docs/reliability.md)");
  }
}

int Trainer::run() {
  for (int64_t s = step0_; s < o_.steps; ++s) {
    StepResult r;
    if (!step(s, r)) return abandon(s);
    log_step(s + 1, r);
    const int rc = after_step(s + 1);
    if (rc >= 0) return rc;
  }
  finish();
  return 0;
}

// One optimizer step: next batch, forward, backward for each micro-batch; then sync + clip +
// update. Returns false when a stop request between micro-batches abandoned the step.
bool Trainer::step(int64_t s, StepResult& r) {
  cpu::governor_tick();  // the thread count for this step (kernels/cpu/thread_governor.h)
  const auto t0 = clock::now();
  std::fill(red_.begin(), red_.end(), 0.0);
  ce_parts_.clear();
  disp_->reset_timers();
  for (int a = 0; a < A_; ++a) {
    // A stop request between micro-batches abandons the step (agreed by every rank): nothing
    // of it is applied, and the checkpoint of the last finished step is written.
    if (a > 0 && int(world_.all_reduce_max(double(stop_signal()))) != 0) {
      arena_.reset();
      tape_->clear();
      mb_tree_.clear();
      return false;
    }
    micro_batch(s, a, r);
  }
  arena_.reset();
  tape_->clear();
  maybe_inject_fault(rank_, s + 1);
  const auto t1 = clock::now();
  red_[0] = tree_sum(ce_parts_);  // the micro-batches' losses in the gradients' tree (grad_tree.h)
  if (o_.zero)
    reduce_scatter_gradients(lm_->params(), groups_);
  else
    sync_gradients(lm_->params(), groups_);
  world_.all_reduce_sum(red_.data(), int64_t(red_.size()));
  const auto t2 = clock::now();
  update(s, r);
  const auto t3 = clock::now();
  const double dispatch_s = disp_->exchange_seconds();
  iv_.dispatch += dispatch_s;
  iv_.compute += secs(t0, t1) - dispatch_s;
  iv_.sync += secs(t1, t2);
  iv_.optim += secs(t2, t3);
  step_stats(r);
  const int64_t tokens = int64_t(B_) * T_ * A_ * P_;
  iv_.secs += secs(t0, t3);
  iv_.tokens += tokens;
  ++iv_.steps;
  const double attn_flops_per_token = 12.0 * L_ * T_ * o_.dim;
  iv_.flops += double(tokens) * (6.0 * double(lm_->config().active_params(r.mean_k)) + attn_flops_per_token);
  return true;
}

// Global micro-batch m = rank * A + a of step s: rank-major, so that 1 rank with A*P
// micro-batches reads exactly what P ranks with A each read, and draws the same K.
void Trainer::micro_batch(int64_t s, int a, StepResult& r) {
  const int m = rank_ * A_ + a;
  const int64_t global_seqs = int64_t(B_) * A_ * P_;
  std::vector<int> k = ks_.draw(s, m);
  const std::vector<int> pool = ks_.pools(s, m);  // EMoE co-activation pools (zeros otherwise)
  loader_.batch(pos0_ + (s - step0_) * global_seqs + int64_t(m) * B_, B_, in_.data(), tgt_.data());
  arena_.reset();
  tape_->clear();
  ForwardStats st;
  const double loss_norm = double(B_) * T_ * A_ * P_;  // the global token count of a step
  Var loss = lm_->forward(*tape_, in_.data(), tgt_.data(), B_, T_, k, &st, loss_norm, pool, ks_.sample_key(s, m));
  tape_->backward(loss);
  mb_tree_.fold(lm_->params(), a, A_);  // A > 1: the pairwise tree over micro-batches (grad_tree.h)
  ce_parts_.push_back(st.ce);  // summed CE / global tokens: the sum over micro-batches and ranks is the mean
  for (int l = 0; l < L_; ++l) {
    const MoEStats& ls = st.layers[l];
    red_[1 + l] += double(ls.assignments);
    for (int e = 0; e < E_ && e < int(ls.counts.size()); ++e) red_[1 + L_ + size_t(l) * E_ + e] += ls.counts[e];
    if (a == 0) r.k_first.push_back(top_p_ ? double(ls.assignments) / (double(B_) * T_) : double(k[l]));
  }
}

// Global gradient norm, each parameter counted once (dense gradients are identical on every rank
// after the sync; each expert lives on one rank of an ep group), clipping, AdamW. --zero 1: each
// rank holds the summed gradient of its own blocks only, which partition every parameter over
// the world: the norm is the world's sum of the blocks' squares; the update is the blocks', and
// the updated blocks are then all-gathered.
void Trainer::update(int64_t s, StepResult& r) {
  ParamStore& ps = lm_->params();
  auto region_grad = [&](Region g) {
    const BlockRange b = o_.zero ? zero_block(ps, groups_, g) : BlockRange{0, ps.region_numel(g)};
    return std::pair<float*, int64_t>(static_cast<float*>(ps.region_grad(g)) + b.begin, b.size());
  };
  auto dense = region_grad(Region::Dense), expert = region_grad(Region::Expert);
  const double dn = global_grad_norm({{dense.first, dense.second}}, ps.device());
  if (o_.zero) {
    const double en = global_grad_norm({{expert.first, expert.second}}, ps.device());
    r.gnorm = std::sqrt(world_.all_reduce_sum(dn * dn + en * en));
  } else {
    // Each expert slab's squares summed alone and added in global expert order: the same bits
    // whatever the ep size (grad_tree.h).
    const double en2 = expert.second ? expert_grad_sumsq(ps, groups_.ep) : 0.0;
    r.gnorm = std::sqrt(dn * dn + en2);
  }
  r.ce = red_[0];
  ANYK_CHECK(std::isfinite(r.gnorm) && std::isfinite(r.ce),
             "training diverged at step " << s + 1 << " (loss " << r.ce << ", grad norm " << r.gnorm
                                          << ") hint: lower --lr or raise --warmup");
  scale_to_norm({dense, expert}, r.gnorm, o_.grad_clip, ps.device());
  r.lr = p_.lr.at(s);
  opt_->step(r.lr);
  if (o_.zero) all_gather_params(ps, groups_);
  ps.zero_grad();
}

// Mean K over layers and the mean over layers of max/mean expert load, from the reduced counts.
void Trainer::step_stats(StepResult& r) const {
  const int64_t tokens = int64_t(B_) * T_ * A_ * P_;
  for (int l = 0; l < L_; ++l) {
    r.mean_k += red_[1 + l] / double(tokens) / L_;
    double mx = 0;
    for (int e = 0; e < E_; ++e) mx = std::max(mx, red_[1 + L_ + size_t(l) * E_ + e]);
    if (red_[1 + l] > 0) r.imbalance += mx / (red_[1 + l] / E_) / L_;
  }
}

void Trainer::log_step(int64_t done, const StepResult& r) {
  if (!(done == step0_ + 1 || done % o_.log_every == 0 || done == o_.steps)) return;
  const double tps = iv_.tokens / iv_.secs;
  const double mfu = peak_ > 0 ? iv_.flops / iv_.secs / peak_ : NAN;  // no CPU peak for a GPU (JSON null)
  // The step arena and the tape's per-op scratch (widened bf16 copies, backward workspaces).
  const double arena_mb = double(arena_.high_water() + tape_->scratch_high_water()) / (1 << 20);
  const double n = double(iv_.steps);
  say(fmt("step %*lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | MFU %s | K %.2f | "
          "imb %.2f | arena %.1f MB",
          int(std::to_string(o_.steps).size()), (long long)done, (long long)o_.steps, r.ce, r.lr, r.gnorm, tps,
          peak_ > 0 ? fmt("%.1f%%", 100 * mfu).c_str() : "n/a", r.mean_k, r.imbalance, arena_mb));
  if (o_.profile)
    say(fmt("  time/step: compute %.1f ms | dispatch %.1f ms | grad sync %.1f ms | optimizer %.1f ms",
            1e3 * iv_.compute / n, 1e3 * iv_.dispatch / n, 1e3 * iv_.sync / n, 1e3 * iv_.optim / n));
  io::Json k_per_layer = io::Json::array();
  for (double k : r.k_first) top_p_ ? k_per_layer.push_back(k) : k_per_layer.push_back(int(k));
  metric({{"type", "train"}, {"step", done}, {"loss", r.ce}, {"lr", r.lr}, {"grad_norm", r.gnorm},
          {"tok_per_s", tps}, {"mfu", mfu}, {"mean_k", r.mean_k}, {"imbalance", r.imbalance},
          {"k_per_layer", k_per_layer}, {"arena_mb", arena_mb}, {"t_compute", iv_.compute / n},
          {"t_dispatch", iv_.dispatch / n}, {"t_sync", iv_.sync / n}, {"t_optim", iv_.optim / n},
          {"device", o_.device}, {"precision", o_.precision}, {"threads", cpu::governor_threads()},
          {"thread_changes", cpu::governor_summary().changes}});
  iv_ = Interval{};
}

// Periodic validation at the run's smallest and largest K, on rank 0's full model.
void Trainer::eval(int64_t done) {
  std::vector<int> eval_ks = one_k_ ? std::vector<int>{o_.k} : std::vector<int>{o_.k_min, o_.k_max};
  if (eval_ks.size() == 2 && eval_ks[0] == eval_ks[1]) eval_ks.pop_back();
  const LM& em = eval_model();  // collective
  if (!root_) return;           // rank 0 evaluates the full model; the others go on
  std::string line = fmt("eval  step %lld |", (long long)done);
  for (int k : eval_ks) {
    std::vector<int> kk(L_, k);
    eval::EvalResult r = eval::evaluate(em, val_, kk, B_, o_.eval_windows, arena_);
    line += fmt(" K=%d val loss %.4f (%.4f bits/byte) |", k, r.loss, r.bits());
    metric({{"type", "eval"}, {"step", done}, {"k", k}, {"val_loss", r.loss}, {"bits_per_byte", r.bits()},
            {"windows", r.windows}});
  }
  line.pop_back();
  say(line);
}

void Trainer::save(int64_t done) {  // collective
  const auto ts = clock::now();
  io::CheckpointMeta meta;
  meta.step = done;
  meta.seed = o_.seed;
  meta.global_seqs = int64_t(B_) * A_ * P_;
  meta.loader_position = pos0_ + (done - step0_) * meta.global_seqs;
  meta.train_shards = p_.train_tokens->describe();
  meta.adam_step = opt_->step_count();
  meta.world_size = P_;
  meta.ep_size = groups_.ep_size;
  meta.micro_batch = B_;
  meta.model = p_.model;
  meta.config_ini = p_.config_ini;
  if (o_.zero) zero_checkpoint_refs(true);
  const int64_t bytes = io::save_checkpoint(groups_, o_.run_dir, meta, ckpt_dense_, ckpt_experts_, o_.keep);
  if (o_.zero) zero_drop_refs();
  const double total = world_.all_reduce_sum(double(bytes));
  say(fmt("checkpoint: saved %s/%s (%.2f MB, %.2f s)", io::checkpoints_dir(o_.run_dir).c_str(),
          io::step_dir_name(done).c_str(), total / (1 << 20), secs(ts, clock::now())));
}

// A stop request abandoned step s + 1: nothing of it is applied; the last finished step is saved.
int Trainer::abandon(int64_t s) {
  lm_->params().zero_grad();
  const int sig = stop_signal();
  const bool have = s == step0_ || (o_.save_every > 0 && s % o_.save_every == 0);
  if (s > step0_ && !have) save(s);
  say(fmt("anyk: caught %s during step %lld: abandoned it; %s %s/%s; exiting", stop_signal_name(sig),
          (long long)s + 1, s > step0_ ? "checkpoint of the last finished step in" : "nothing to save yet;",
          io::checkpoints_dir(o_.run_dir).c_str(), io::step_dir_name(s).c_str()));
  raise_io_error();
  return 0;
}

// The eval, save and stop decisions after step `done`. Stop requests (Slurm's --signal warning,
// scancel, preemption): every rank agrees with one all-reduce, finishes this same step,
// checkpoints and exits cleanly (and requeues the Slurm job when ANYK_REQUEUE_ON_SIGNAL=1).
int Trainer::after_step(int64_t done) {
  if (o_.eval_every > 0 && done % o_.eval_every == 0 && done != o_.steps) eval(done);
  const bool saved_now = (o_.save_every > 0 && done % o_.save_every == 0) || done == o_.steps;
  if (saved_now) save(done);
  const int agreed = int(world_.all_reduce_max(double(stop_signal() + (io_error_.empty() ? 0 : 1000))));
  if (agreed >= 1000) {  // rank 0 could not write its log or metrics
    if (root_) throw AgreedError(io_error_);
    throw ReportedError("rank 0 failed");
  }
  const int sig = agreed;
  if (sig == 0 || done >= o_.steps) return -1;
  if (!saved_now) save(done);
  say(fmt("anyk: caught %s at step %lld: checkpoint written to %s/%s; exiting", stop_signal_name(sig),
          (long long)done, io::checkpoints_dir(o_.run_dir).c_str(), io::step_dir_name(done).c_str()));
  const char* requeue = std::getenv("ANYK_REQUEUE_ON_SIGNAL");
  const char* job = std::getenv("SLURM_JOB_ID");
  if (root_ && requeue && std::string(requeue) == "1" && job) {
    const std::string cmd = std::string("scontrol requeue ") + job;
    say(fmt("anyk: requeueing job %s (%s)", job, std::system(cmd.c_str()) == 0 ? "ok" : "failed"));
  }
  raise_io_error();
  return 0;
}

// model.h5 and the K-sweep. Rank 0 alone saves and evaluates; the other ranks wait for its
// outcome, so a failure (a full disk) ends every rank with one message and no MPI_Abort.
void Trainer::finish() {
  const LM& em = eval_model();  // collective: gathers the experts onto rank 0
  agree_or_throw(world_, [&] {
    if (!root_) return;
    raise_io_error();
    io::save_weights(o_.run_dir + "/model.h5", em, o_.steps, o_.seed, o_.tokenizer_hash);
    say("saved " + o_.run_dir + "/model.h5");
    std::vector<eval::EvalResult> rs;  // every uniform K on the same val windows
    for (int k = 1; k <= E_; ++k) {
      std::vector<int> kk(L_, k);
      rs.push_back(eval::evaluate(em, val_, kk, B_, o_.eval_windows, arena_, "sweep"));
    }
    say(fmt("K-sweep on %lld val windows of %d tokens:", (long long)rs[0].windows, T_));
    const bool bytes = lm_->config().vocab == 256;
    for (const auto& line : eval::result_table(rs, bytes)) say(line);
    // The context-free baseline: the entropy of the training tokens' frequencies.
    const std::vector<double> hist = p_.train_tokens->histogram(lm_->config().vocab);
    double H = 0, n = double(p_.train_tokens->num_tokens());
    for (double c : hist)
      if (c > 0) H -= c / n * std::log2(c / n);
    say(fmt("unigram entropy of the training tokens: %.4f bits/%s (a model without context)", H,
            bytes ? "byte" : "token"));
    io::write_file_atomic(o_.run_dir + "/sweep.json", eval::results_json(rs), io::kCheckpointSpaceHint);
    for (const auto& r : rs)
      metric({{"type", "sweep"}, {"k", r.k[0]}, {"val_loss", r.loss}, {"bits_per_byte", r.bits()}});
    raise_io_error();
  });
}

const LM& Trainer::eval_model() {
  if (!eval_twin_) return *lm_;
  if (groups_.ep_size > 1) {
    ParamStore* full = groups_.ep.rank() == 0 ? &eval_twin_->params() : nullptr;
    if (dev_ == Device::CPU)
      gather_full_params(lm_->params(), full, groups_.ep);
    else
      gather_full_staged(lm_->params(), full, groups_.ep);
  }
  else
    copy_params(*lm_, *eval_twin_);
  return *eval_twin_;
}

void Trainer::warn(const std::string& line) {
  if (!root_ || !io_error_.empty()) return;
  try {
    out_.line("anyk: " + line, stderr);
  } catch (const Error& e) {
    io_error_ = e.what();
  }
}

void Trainer::say(const std::string& line) {
  if (!root_ || !io_error_.empty()) return;
  try {
    out_.line(line);
  } catch (const Error& e) {
    io_error_ = e.what();
  }
}

// One metrics.jsonl line, flushed as written; a failed flush stops the run with the path and
// errno's text rather than losing lines silently.
void Trainer::metric(const io::Json& j) {
  std::FILE* f = metrics_.get();
  if (!f) return;
  const std::string line = io::json_text(j) + "\n";
  std::fputs(line.c_str(), f);
  if (io_error_.empty() && (std::fflush(f) != 0 || std::ferror(f)))
    io_error_ = io::io_message("writing", o_.run_dir + "/metrics.jsonl", errno, io::kCheckpointSpaceHint);
}

void Trainer::raise_io_error() const {  // where rank 0 is alone
  if (!io_error_.empty()) throw Error(io_error_);
}

}  // namespace anyk::launch
