// The trainer. One step: for each micro-batch a, draw K per layer from the schedule, forward on
// the tape (activations in the arena, loss normalised by the whole step's token count so the
// micro-batches' parameter gradients add up to the full-batch gradient), backward, then rewind
// the arena; after the last micro-batch clip the global gradient norm, AdamW, zero gradients.
#include "launch/train.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdarg>
#include <cstring>
#include <fstream>
#include <filesystem>
#include <iostream>
#include <memory>

#include "data/loader.h"
#include "launch/checkpoint.h"
#include "data/shard.h"
#include "launch/evaluate.h"
#include "launch/fsio.h"
#include "launch/memory.h"
#include "launch/options.h"
#include "launch/rundir.h"
#include "launch/report.h"
#include "launch/signals.h"
#include "launch/weights.h"
#include "model/k_schedule.h"
#include "model/lm.h"
#include "optim/adamw.h"
#include "parallel/dispatcher.h"
#include "parallel/gather.h"
#include "parallel/grad_sync.h"
#include "parallel/groups.h"
#include "parallel/mpi_dispatcher.h"
#include "runtime/check.h"

namespace anyk::launch {

namespace fs = std::filesystem;

namespace {

struct Prepared {
  TrainOptions o;
  std::string config_ini;
  ModelConfig model;  // forced-K router (top_p = 0); the training copy sets top_p for top_p
  KScheduleConfig kcfg;
  LrSchedule lr;
  std::shared_ptr<const std::vector<uint16_t>> train_tokens, val_tokens;
  std::string resume_dir;  // non-empty when resuming: the resolved checkpoint directory
  CheckpointMeta resume;   // its meta.h5 attributes
};

std::string usage_line() {
  return "anyk train --data DIR --run-dir DIR [--config FILE] [options]\n"
         "Train an elastic-K MoE language model. Flags override values from --config (INI with\n"
         "the same long names, e.g. `dim = 128`). Writes train.log, metrics.jsonl, config.ini,\n"
         "model.h5, sweep.json and checkpoints/step_<n>/ into the run dir and ends with a K-sweep table";
}

// Parses and validates everything; touches no file. Returns false when --help was shown.
bool parse_and_validate(int argc, char** argv, Prepared& p, int world_size, bool print_help) {
  TrainOptions& o = p.o;
  bool help = false;
  OptionTable table(usage_line());
  bind_train_options(table, o);
  // --resume is bound here, not in the table, so config.ini (the table's INI) never carries it.
  table.desc().add_options()("config", po::value<std::string>(&o.config),
                             "INI file of these options (flags given here win)")(
      "resume", po::value<std::string>(&o.resume),
      "continue from a checkpoint: its directory, a `latest` file, or `latest` "
      "(= run_dir/checkpoints/latest); the model shape and --seed must match it")(
      "overwrite", po::bool_switch(&o.overwrite),
      "start a new run in a --run-dir that already holds one: the old run is moved aside to "
      "RUN_DIR.overwritten-<UTC time>, never deleted")(
      "help,h", po::bool_switch(&help), "show this help");
  po::variables_map vm;
  try {
    po::store(parse_command_line(argc, argv, table.desc(), "train"), vm);
  } catch (const po::error& e) {
    ANYK_FAIL(e.what() << " hint: see anyk train --help");
  }
  if (vm.count("help") && vm["help"].as<bool>()) {
    if (print_help) std::cout << table.desc() << "\n";
    return false;
  }
  if (vm.count("config")) {
    const std::string path = vm["config"].as<std::string>();
    ANYK_CHECK(!fs::is_directory(path), "--config " << path << " is a directory, not an INI file hint: pass a file, "
                                                               "e.g. RUN_DIR/config.ini");
    ANYK_CHECK(fs::is_regular_file(path), "--config " << path << " not found hint: check the path");
    std::ifstream file(path);
    ANYK_CHECK(file, "cannot read --config " << path << " hint: check the path");
    std::stringstream in;
    in << file.rdbuf();
    check_option_text(in.str(), "config file " + path);  // before Boost sees it (see options.h)
    try {
      // store() keeps values already set on the command line: flags win over the file.
      po::store(po::parse_config_file(in, table.desc(), false), vm);
    } catch (const po::error& e) {
      ANYK_FAIL("in config file " << path << ": " << e.what() << " hint: see anyk train --help");
    }
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    ANYK_FAIL(e.what() << " hint: see anyk train --help");
  }

  // The default warm-up must not make a short run (--steps 10) an error; an explicit one may.
  if (vm["warmup"].defaulted() && o.warmup > o.steps) o.warmup = o.steps;
  validate_train_options(o);
  check_layout(world_size, o.ep, o.experts);
  p.model = model_config(o);
  p.model.validate();
  p.kcfg = k_schedule_config(o);
  KSchedule check_schedule(p.kcfg, o.layers, o.experts);  // throws on an invalid combination
  p.lr = lr_schedule(o);
  p.lr.validate();

  ANYK_CHECK(fs::is_directory(o.data),
             "--data " << o.data << " is not a directory hint: create it with anyk prepare --input FILE --out "
                       << o.data);
  p.train_tokens = std::make_shared<const std::vector<uint16_t>>(data::read_shard(o.data + "/train.bin", o.vocab));
  p.val_tokens = std::make_shared<const std::vector<uint16_t>>(data::read_shard(o.data + "/val.bin", o.vocab));
  ANYK_CHECK(int64_t(p.train_tokens->size()) >= int64_t(o.seq_len) + 1,
             o.data << "/train.bin has " << p.train_tokens->size() << " tokens, fewer than one window of --seq-len "
                    << o.seq_len << " + 1");
  ANYK_CHECK(int64_t(p.val_tokens->size()) >= int64_t(o.seq_len) + 1,
             o.data << "/val.bin has " << p.val_tokens->size() << " tokens, fewer than one window of --seq-len "
                    << o.seq_len << " + 1 hint: raise --val-fraction in anyk prepare or lower --seq-len");
  ANYK_CHECK(!fs::exists(o.run_dir) || fs::is_directory(o.run_dir),
             "--run-dir " << o.run_dir << " exists and is not a directory");
  ANYK_CHECK(!(o.overwrite && !o.resume.empty()),
             "--overwrite and --resume exclude each other hint: --resume continues the run in --run-dir; "
             "--overwrite moves it aside and starts a new one");
  if (o.resume.empty() && !o.overwrite) {
    const std::vector<std::string> found = run_files(o.run_dir);
    if (!found.empty()) {
      std::string list;
      for (const auto& f : found) list += (list.empty() ? "" : ", ") + f;
      ANYK_FAIL("--run-dir " << o.run_dir << " already holds a run (" << list << ") hint: pass --resume latest "
                             << "to continue it, --overwrite to move it aside and start a new run, or choose "
                                "another --run-dir");
    }
  }
  p.config_ini = "# anyk train: fully resolved options (usable with --config)\n" + table.to_ini();

  if (!o.init_weights.empty()) {
    ANYK_CHECK(o.resume.empty(), "--init-weights and --resume exclude each other hint: --resume restores "
                                 "weights and optimizer state; --init-weights starts a new run from weights");
    ANYK_CHECK(fs::is_regular_file(o.init_weights),
               "--init-weights " << o.init_weights << " is not a file hint: pass a run's model.h5 or a "
                                                      "consolidated checkpoint (anyk convert --to consolidated)");
    h5::check_same_shape(weights_config(o.init_weights), p.model, o.init_weights, "this run");
  }
  if (!o.resume.empty()) {  // every check that can refuse the checkpoint, before any file is written
    p.resume_dir = resolve_checkpoint(o.resume, o.run_dir);
    p.resume = read_checkpoint_meta(p.resume_dir);
    const std::string meta_path = (fs::path(p.resume_dir) / "meta.h5").string();
    h5::check_same_shape(p.resume.model, p.model, meta_path, "this run");
    ANYK_CHECK(p.resume.seed == o.seed, "--seed " << o.seed << " differs from the seed " << p.resume.seed << " in "
                                                  << meta_path << " hint: resume with --seed " << p.resume.seed
                                                  << " (it keys the data windows and the K draws)");
    ANYK_CHECK(p.resume.step < o.steps, meta_path << " is at step " << p.resume.step << " and --steps is " << o.steps
                                                  << ": nothing left to train hint: raise --steps");
  }
  return true;
}

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

std::vector<ParamSpan> spans_of(const ParamStore& ps, Region r) {
  std::vector<ParamSpan> s;
  for (const ParamInfo& i : ps.infos())
    if (i.region == r) s.push_back(ParamSpan{i.offset, i.shape.numel(), i.decay});
  return s;
}

}  // namespace

// Fault injection for the tests of failure handling: ANYK_FAULT_INJECT="rank:step" makes that
// rank fail with an error at that step (1-based), as a bad file or a dead node would.
void maybe_inject_fault(int rank, int64_t step) {
  const char* spec = std::getenv("ANYK_FAULT_INJECT");
  if (!spec) return;
  int r = -1;
  long long st = -1;
  if (std::sscanf(spec, "%d:%lld", &r, &st) == 2 && r == rank && st == step)
    ANYK_FAIL("injected fault on rank " << rank << " at step " << step << " (ANYK_FAULT_INJECT)");
}

int train_command(int argc, char** argv) {
  // MPI is always up (a single process is a world of one); every rank validates everything.
  Comm world = Comm::world();
  const int P = world.size(), rank = world.rank();
  const bool root = rank == 0;
  install_stop_handlers();  // after MPI_Init, so ours replace any the MPI library installed
  Prepared p;
  bool run = true;
  // Every check before any allocation or file: options, data, checkpoint meta, then memory. A
  // failure on any rank stops every rank with one message (agree_or_throw).
  agree_or_throw(world, [&] { run = parse_and_validate(argc, argv, p, P, root); });
  if (!run) return 0;  // --help
  const TrainOptions& o = p.o;
  const int64_t shard_tokens = int64_t(p.train_tokens->size() + p.val_tokens->size());
  const MemoryEstimate mem = estimate_train_memory(o, P, o.ep, root, shard_tokens);
  Comm node;  // the ranks of this node, which share its memory
  {
    MPI_Comm c = MPI_COMM_NULL;
    ANYK_MPI_CHECK(MPI_Comm_split_type(world.raw(), MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &c));
    node = Comm(c, true);
  }
  const double node_need = node.all_reduce_sum(mem.total());
  std::string mem_source;
  const double mem_avail = available_memory(&mem_source);
  agree_or_throw(world, [&] {
    if (node.rank() != 0 || mem_avail < 0 || node_need <= mem_avail) return;
    ANYK_FAIL("not enough memory: this run needs about " << gib(node_need) << " on this node (" << node.size()
                                                         << " rank(s); rank " << rank << ": " << mem.describe()
                                                         << ") but " << gib(mem_avail) << " is available ("
                                                         << mem_source << ") hint: " << mem.largest_knob());
  });

  omp_set_num_threads(o.threads);
  const int B = o.batch, T = o.seq_len, A = o.grad_accum, L = o.layers, E = o.experts;
  const KSchedule ks(p.kcfg, L, E);
  const bool top_p = ks.per_token();
  ModelConfig train_cfg = p.model;
  if (top_p) {
    train_cfg.router.top_p = o.top_p;
    train_cfg.router.k_min = o.k_min;
  }
  // world = ep x edp; experts split over the ep group, replicated over edp.
  ProcessGroups groups = make_groups(Comm::world(), o.ep, E);
  std::unique_ptr<Dispatcher> disp;
  MpiDispatcher* mpi_disp = nullptr;
  if (groups.ep_size == 1) {
    disp = std::make_unique<LocalDispatcher>(E);
  } else {
    auto d = std::make_unique<MpiDispatcher>(groups.ep, E);
    mpi_disp = d.get();
    disp = std::move(d);
  }
  // Allocation failures name what was being allocated (the estimate above should prevent them).
  auto oom = [&](const char* what, double bytes) {
    ANYK_FAIL("out of memory allocating " << what << " (" << gib(bytes) << "; the run's estimate is "
                                          << mem.describe() << ") hint: " << mem.largest_knob());
  };
  std::unique_ptr<LM> lm_owner;
  try {
    lm_owner = std::make_unique<LM>(train_cfg, *disp);
  } catch (const std::bad_alloc&) {
    oom("the parameters and gradients", mem.params / 2);
  }
  LM& lm = *lm_owner;
  lm.init(uint64_t(o.seed));
  if (!o.init_weights.empty()) {
    // Every rank reads the whole file into a single-process model, then keeps its own experts.
    LocalDispatcher one(E);
    LM full(p.model, one);
    load_weights(o.init_weights, full);
    for (int id = 0; id < lm.params().size(); ++id) {
      const ParamInfo& info = lm.params().info(id);
      Tensor dst = lm.params().value(id), src = full.params().value(full.params().find(info.name));
      int64_t offset = info.region == Region::Expert ? int64_t(disp->first_expert()) * (dst.numel() / dst.shape[0]) : 0;
      std::memcpy(dst.data, src.ptr<float>() + offset, dst.bytes());
    }
  }
  // Evaluation and saving use a single-process copy with every expert, on rank 0: under expert
  // parallelism the experts are gathered into it, and evaluation always forces K (a top_p
  // router differs), so a twin is needed in those cases.
  LocalDispatcher full_disp(E);
  std::unique_ptr<LM> eval_twin;
  if (top_p || groups.ep_size > 1) {
    try {
      eval_twin = std::make_unique<LM>(p.model, full_disp);
    } catch (const std::bad_alloc&) {
      oom("the single-process evaluation copy of the model", mem.eval_copy * 2);
    }
  }
  auto eval_model = [&]() -> const LM& {  // collective: every rank calls it
    if (!eval_twin) return lm;
    if (groups.ep_size > 1)
      gather_full_params(lm.params(), groups.ep.rank() == 0 ? &eval_twin->params() : nullptr, groups.ep);
    else
      copy_params(lm, *eval_twin);
    return *eval_twin;
  };

  ParamStore& ps = lm.params();
  AdamW opt(AdamWConfig{o.lr, 0.9, 0.95, 1e-8, o.weight_decay}, ps.device());
  int opt_region[kNumRegions] = {-1, -1};
  for (Region r : {Region::Dense, Region::Expert}) {
    int64_t n = ps.region_numel(r);
    if (n == 0) continue;
    try {
      opt_region[int(r)] = opt.add_region(static_cast<float*>(ps.region_data(r)),
                                          static_cast<const float*>(ps.region_grad(r)), n, spans_of(ps, r));
    } catch (const std::bad_alloc&) {
      oom("the AdamW moments", 8.0 * double(n));
    }
  }
  // Views of this rank's parameters and moments, for saving and resuming.
  const std::vector<TensorRef> ckpt_dense = dense_refs(ps, &opt, opt_region[int(Region::Dense)]);
  const std::vector<ExpertRef> ckpt_experts = expert_refs(ps, &opt, opt_region[int(Region::Expert)], disp->first_expert());

  // Where the run starts: step 0 and sample 0, or the checkpoint's step and loader position.
  // Step s reads global samples [pos0 + (s - step0) * global_seqs, ...), so a resume into a
  // layout with another global batch still continues the sample stream where it stopped.
  // The checkpoint is read (every checksum verified) before any file is written.
  const bool resuming = !p.resume_dir.empty();
  int64_t step0 = 0, pos0 = 0;
  double resume_secs = 0;
  if (resuming) {
    const auto tr = std::chrono::steady_clock::now();
    read_checkpoint_tensors(p.resume_dir, p.resume, ckpt_dense, ckpt_experts);
    opt.set_step_count(p.resume.adam_step);
    step0 = p.resume.step;
    pos0 = p.resume.loader_position;
    resume_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - tr).count();
  }
  // Everything is valid and every rank has accepted the checkpoint. Rank 0 takes the run dir:
  // moves an old run aside (--overwrite), creates the dir and locks it for the run's life (the
  // kernel drops the lock however the process ends); a second run on the same dir fails here.
  RunDirLock lock;
  std::string moved_to;
  agree_or_throw(world, [&] {
    if (!root) return;
    if (o.overwrite && !run_files(o.run_dir).empty()) {
      RunDirLock old_run(o.run_dir);  // never move a run that is still being written
      moved_to = move_run_aside(o.run_dir);
    }
    std::error_code ec;
    fs::create_directories(o.run_dir, ec);
    if (ec) fail_io("creating directory", o.run_dir, ec.value());
    lock = RunDirLock(o.run_dir);
    if (!resuming) {  // re-checked under the lock: another run may have started meanwhile
      const std::vector<std::string> found = run_files(o.run_dir);
      ANYK_CHECK(found.empty(), "--run-dir " << o.run_dir << " already holds a run (" << found[0]
                                             << ") hint: pass --resume latest to continue it, --overwrite to move "
                                                "it aside, or choose another --run-dir");
    }
  });

  // From here on files are written (by rank 0 only).
  LineSink out;
  std::FILE* metrics = nullptr;
  if (root) {
    write_text_file(o.run_dir + "/config.ini", p.config_ini);
    // A resumed run appends to metrics.jsonl (entries carry their step) and keeps the earlier
    // train.log as train.log.<i>.
    const fs::path log = fs::path(o.run_dir) / "train.log";
    if (resuming && fs::exists(log)) {
      int i = 1;
      while (fs::exists(log.string() + "." + std::to_string(i))) ++i;
      fs::rename(log, log.string() + "." + std::to_string(i));
    }
    out.open_log(log.string());
    metrics = std::fopen((o.run_dir + "/metrics.jsonl").c_str(), resuming ? "a" : "w");
    if (!metrics) fail_io("writing", o.run_dir + "/metrics.jsonl", errno);
  }
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> metrics_guard(metrics, [](std::FILE* f) {
    return f ? std::fclose(f) : 0;
  });
  // Rank 0's log and metrics writes can fail (a full disk) while the other ranks are on their way
  // to the next collective: the first such error is kept and every rank learns of it at the end
  // of the step (with the stop-signal all-reduce), so the job stops with one message, no abort.
  std::string io_error;
  auto say = [&](const std::string& line) {
    if (!root || !io_error.empty()) return;
    try {
      out.line(line);
    } catch (const Error& e) {
      io_error = e.what();
    }
  };
  // metrics.jsonl lines are flushed as written; a failed flush stops the run with the path and
  // errno's text rather than losing lines silently.
  auto flush_metrics = [&] {
    if (metrics && io_error.empty() && (std::fflush(metrics) != 0 || std::ferror(metrics)))
      io_error = io_message("writing", o.run_dir + "/metrics.jsonl", errno);
  };
  auto raise_io_error = [&] {  // after the loop, where rank 0 is alone
    if (!io_error.empty()) throw Error(io_error);
  };
  if (!moved_to.empty()) say("anyk: --overwrite: the previous run in " + o.run_dir + " was moved to " + moved_to);

  auto region_grad = [&](Region r) {
    return std::pair<float*, int64_t>(static_cast<float*>(ps.region_grad(r)), ps.region_numel(r));
  };
  ps.zero_grad();

  data::Loader loader(p.train_tokens, T, uint64_t(o.seed));
  data::Loader val(p.val_tokens, T, uint64_t(o.seed));

  const double core_flops = world.all_reduce_max(measure_sgemm_flops_single_core());  // best rank
  const double peak = core_flops * o.threads * P;
  const bool one_k = p.kcfg.strategy == KStrategy::Fixed || p.kcfg.strategy == KStrategy::EMoE;
  const int k_lo = one_k ? o.k : o.k_min;
  const int k_hi = one_k ? o.k : o.k_max;
  say("anyk train: " + lm.config().summary() +
           fmt(" | active params/token: %lld at K=%d, %lld at K=%d", (long long)lm.config().active_params(k_lo),
               k_lo, (long long)lm.config().active_params(k_hi), k_hi));
  say(fmt("data: %zu train / %zu val tokens from %s; B=%d T=%d A=%d x %d ranks (%d tokens/step), %lld steps",
          p.train_tokens->size(), p.val_tokens->size(), o.data.c_str(), B, T, A, P, B * T * A * P,
          (long long)o.steps));
  say(fmt("layout: %d ranks = ep %d x edp %d, %d experts per rank, %d threads per rank", P, groups.ep_size,
          groups.edp_size, disp->num_local(), o.threads));
  {
    std::string what;
    switch (p.kcfg.strategy) {
      case KStrategy::Fixed: what = fmt("K=%d", o.k); break;
      case KStrategy::TopP: what = fmt("p=%g, per-token K in [%d,%d]", o.top_p, o.k_min, o.k_max); break;
      case KStrategy::EMoE:
        what = fmt("k_train=%d from a per-token pool of U[%d,%d] top experts, router KL weight %g", o.k, o.k,
                   ks.k_ideal(), o.router_kl_weight);
        break;
      default: what = fmt("K in [%d,%d]", o.k_min, o.k_max);
    }
    say(fmt("K strategy %s: %s; seed %lld", o.k_strategy.c_str(), what.c_str(), (long long)o.seed));
    // The top expert always holds at least 1/E of the mass, so p <= 1/E never adds a second expert.
    if (p.kcfg.strategy == KStrategy::TopP && o.top_p <= 1.0 / E && o.k_min < o.k_max)
      say(fmt("warning: --top-p %g <= 1/experts = %g: the top expert alone always reaches it, so every token "
              "uses --k-min %d experts (the same as --k-strategy fixed --k %d); raise --top-p above %g",
              o.top_p, 1.0 / E, o.k_min, o.k_min, 1.0 / E));
  }
  say(fmt("peak: %d ranks x %d threads x %.1f GFLOP/s (single-core 512^3 SGEMM) = %.1f GFLOP/s", P, o.threads,
          core_flops * 1e-9, peak * 1e-9));
  if (resuming)
    say(fmt("resumed from %s: step %lld, sample %lld, saved by %lld ranks with ep %lld (%.2f s)",
            p.resume_dir.c_str(), (long long)step0, (long long)pos0, (long long)p.resume.world_size,
            (long long)p.resume.ep_size, resume_secs));
  say("memory: estimate " + mem.describe() + " on rank 0; " + gib(node_need) + " for the " +
      std::to_string(node.size()) + " rank(s) on its node; " +
      (mem_avail >= 0 ? gib(mem_avail) + " available (" + mem_source + ")" : std::string("available unknown")));
  if (resuming) {
    // K is drawn per global micro-batch of --batch sequences: another micro-batch size or count
    // per step gives another K sequence, so the run continues, but not as the uninterrupted
    // run would have.
    const int64_t ck_b = p.resume.micro_batch, ck_m = ck_b > 0 ? p.resume.global_seqs / ck_b : 0;
    if (ck_b > 0 && (ck_b != B || ck_m != int64_t(A) * P))
      say(fmt("warning: the checkpoint was written with micro-batches of --batch %lld, %lld per step (--grad-accum "
              "x ranks); this run uses --batch %d, %d per step. K is drawn per global micro-batch, so the K draws "
              "and losses will differ from an uninterrupted run; resume with --batch %lld and --grad-accum x ranks "
              "= %lld to continue it exactly",
              (long long)ck_b, (long long)ck_m, B, A * P, (long long)ck_b, (long long)ck_m));
  }
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
    // mpirun sends SIGTERM to the ranks only after odls_base_sigkill_timeout seconds and SIGKILL
    // the same time later: with the default of 1 s no step or checkpoint can finish.
    const char* kd = std::getenv("OMPI_MCA_odls_base_sigkill_timeout");
    if (!kd || std::atoi(kd) < 10)
      say("note: under mpirun a SIGTERM or Ctrl-C gives the ranks " + std::string(kd ? kd : "1") +
          " s before SIGKILL, too little to write a checkpoint; run mpirun --mca odls_base_sigkill_timeout 60 "
          "(more than a step plus a save) so that a signal ends with a checkpoint (docs/reliability.md)");
  }

  Arena arena;
  Tape tape(arena);
  std::vector<int> in(size_t(B) * T), tgt(size_t(B) * T);
  const double loss_norm = double(B) * T * A * P;  // the global token count of a step
  const int64_t global_seqs = int64_t(B) * A * P;
  const double attn_flops_per_token = 12.0 * L * T * o.dim;

  // Accumulators over the steps since the last log line.
  double interval_secs = 0, interval_flops = 0;
  int64_t interval_tokens = 0, interval_steps = 0;

  auto run_eval = [&](int64_t step_done) {
    std::vector<int> eval_ks =
        one_k ? std::vector<int>{o.k} : std::vector<int>{o.k_min, o.k_max};
    if (eval_ks.size() == 2 && eval_ks[0] == eval_ks[1]) eval_ks.pop_back();
    const LM& em = eval_model();  // collective
    if (!root) return;            // rank 0 evaluates the full model; the others go on
    std::string line = fmt("eval  step %lld |", (long long)step_done);
    for (int k : eval_ks) {
      std::vector<int> kk(L, k);
      EvalResult r = evaluate(em, val, kk, B, o.eval_windows, arena);
      line += fmt(" K=%d val loss %.4f (%.4f bits/byte) |", k, r.loss, r.bits());
      std::fprintf(metrics,
                   "{\"type\": \"eval\", \"step\": %lld, \"k\": %d, \"val_loss\": %s, \"bits_per_byte\": %s, "
                   "\"windows\": %lld}\n",
                   (long long)step_done, k, json_number(r.loss).c_str(), json_number(r.bits()).c_str(),
                   (long long)r.windows);
    }
    flush_metrics();
    line.pop_back();
    say(line);
  };

  using clock = std::chrono::steady_clock;
  auto secs = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
  // Step-time split since the last log line (seconds): compute (forward + backward, without the
  // dispatcher's exchanges), dispatch (count + row exchanges, including waiting for peers),
  // gradient sync, optimizer (norm, clipping, AdamW).
  double t_compute = 0, t_dispatch = 0, t_sync = 0, t_optim = 0;
  // Per step, reduced over all ranks in one call: [CE, assignments (L), counts (L*E)].
  std::vector<double> red(1 + L + size_t(L) * E);

  auto save = [&](int64_t step_done) {  // collective
    const auto ts = clock::now();
    CheckpointMeta meta;
    meta.step = step_done;
    meta.seed = o.seed;
    meta.loader_position = pos0 + (step_done - step0) * global_seqs;
    meta.global_seqs = global_seqs;
    meta.adam_step = opt.step_count();
    meta.world_size = P;
    meta.ep_size = groups.ep_size;
    meta.micro_batch = B;
    meta.model = p.model;
    meta.config_ini = p.config_ini;
    const int64_t bytes = save_checkpoint(groups, o.run_dir, meta, ckpt_dense, ckpt_experts, o.keep);
    const double total = world.all_reduce_sum(double(bytes));
    say(fmt("checkpoint: saved %s/%s (%.2f MB, %.2f s)", checkpoints_dir(o.run_dir).c_str(),
            step_dir_name(step_done).c_str(), total / (1 << 20), secs(ts, clock::now())));
  };

  for (int64_t s = step0; s < o.steps; ++s) {
    const auto t0 = clock::now();
    std::fill(red.begin(), red.end(), 0.0);
    std::vector<double> k_first;  // realised K per layer of rank 0's first micro-batch
    if (mpi_disp) mpi_disp->reset_timers();
    bool abandoned = false;
    for (int a = 0; a < A; ++a) {
      // A stop request between micro-batches abandons the step (agreed by every rank): nothing
      // of it is applied, and the checkpoint of the last finished step is written below.
      if (a > 0 && int(world.all_reduce_max(double(stop_signal()))) != 0) {
        abandoned = true;
        break;
      }
      // Global micro-batch m of this step: rank-major, so that 1 rank with A*P micro-batches
      // reads exactly what P ranks with A each read, and draws the same K.
      const int m = rank * A + a;
      std::vector<int> k = ks.draw(s, m);
      const std::vector<int> pool = ks.pools(s, m);  // EMoE co-activation pools (zeros otherwise)
      loader.batch(pos0 + (s - step0) * global_seqs + int64_t(m) * B, B, in.data(), tgt.data());
      arena.reset();
      tape.clear();
      ForwardStats st;
      Var loss = lm.forward(tape, in.data(), tgt.data(), B, T, k, &st, loss_norm, pool, ks.sample_key(s, m));
      tape.backward(loss);
      red[0] += st.ce;  // summed CE / global tokens: the sum over micro-batches and ranks is the mean
      for (int l = 0; l < L; ++l) {
        const MoEStats& ls = st.layers[l];
        red[1 + l] += double(ls.assignments);
        for (int e = 0; e < E && e < int(ls.counts.size()); ++e) red[1 + L + size_t(l) * E + e] += ls.counts[e];
        if (a == 0) k_first.push_back(top_p ? double(ls.assignments) / (double(B) * T) : double(k[l]));
      }
    }
    arena.reset();
    tape.clear();
    if (abandoned) {
      ps.zero_grad();
      const int sig = stop_signal();
      const bool have = s == step0 || (o.save_every > 0 && s % o.save_every == 0);
      if (s > step0 && !have) save(s);
      say(fmt("anyk: caught %s during step %lld: abandoned it; %s %s/%s; exiting", stop_signal_name(sig),
              (long long)s + 1, s > step0 ? "checkpoint of the last finished step in" : "nothing to save yet;",
              checkpoints_dir(o.run_dir).c_str(), step_dir_name(s).c_str()));
      raise_io_error();
      return 0;
    }
    maybe_inject_fault(rank, s + 1);
    const auto t1 = clock::now();
    sync_gradients(ps, groups);
    world.all_reduce_sum(red.data(), int64_t(red.size()));
    const auto t2 = clock::now();
    // Global gradient norm, each parameter counted once: dense gradients are identical on every
    // rank after the sync; each expert lives on one rank of an ep group.
    auto dense = region_grad(Region::Dense), expert = region_grad(Region::Expert);
    const double dn = global_grad_norm({{dense.first, dense.second}}, ps.device());
    double en2 = 0;
    if (expert.second) {
      const double en = global_grad_norm({{expert.first, expert.second}}, ps.device());
      en2 = groups.ep.all_reduce_sum(en * en);
    }
    const double gnorm = std::sqrt(dn * dn + en2);
    const double ce = red[0];
    ANYK_CHECK(std::isfinite(gnorm) && std::isfinite(ce),
               "training diverged at step " << s + 1 << " (loss " << ce << ", grad norm " << gnorm
                                            << ") hint: lower --lr or raise --warmup");
    scale_to_norm({dense, expert}, gnorm, o.grad_clip, ps.device());
    const double lr = p.lr.at(s);
    opt.step(lr);
    ps.zero_grad();
    const auto t3 = clock::now();
    const double dispatch_s = mpi_disp ? mpi_disp->exchange_seconds() : 0.0;
    t_dispatch += dispatch_s;
    t_compute += secs(t0, t1) - dispatch_s;
    t_sync += secs(t1, t2);
    t_optim += secs(t2, t3);

    const int64_t tokens = int64_t(B) * T * A * P;
    double mean_k = 0, imbalance = 0;
    for (int l = 0; l < L; ++l) {
      mean_k += red[1 + l] / double(tokens) / L;
      double mx = 0;
      for (int e = 0; e < E; ++e) mx = std::max(mx, red[1 + L + size_t(l) * E + e]);
      if (red[1 + l] > 0) imbalance += mx / (red[1 + l] / E) / L;
    }
    interval_secs += secs(t0, t3);
    interval_tokens += tokens;
    ++interval_steps;
    interval_flops += double(tokens) * (6.0 * double(lm.config().active_params(mean_k)) + attn_flops_per_token);

    const int64_t done = s + 1;
    if (done == step0 + 1 || done % o.log_every == 0 || done == o.steps) {
      const double tps = interval_tokens / interval_secs;
      const double mfu = interval_flops / interval_secs / peak;
      const double arena_mb = double(arena.high_water()) / (1 << 20);
      const int64_t n_steps = interval_steps;
      say(fmt("step %*lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | MFU %.1f%% | K %.2f | "
              "imb %.2f | arena %.1f MB",
              int(std::to_string(o.steps).size()), (long long)done, (long long)o.steps, ce, lr, gnorm, tps,
              100 * mfu, mean_k, imbalance, arena_mb));
      if (o.profile)
        say(fmt("  time/step: compute %.1f ms | dispatch %.1f ms | grad sync %.1f ms | optimizer %.1f ms",
                1e3 * t_compute / n_steps, 1e3 * t_dispatch / n_steps, 1e3 * t_sync / n_steps,
                1e3 * t_optim / n_steps));
      if (metrics) {
        std::string kl = "[";
        for (size_t l = 0; l < k_first.size(); ++l)
          kl += (l ? ", " : "") + (top_p ? json_number(k_first[l]) : std::to_string(int(k_first[l])));
        kl += "]";
        std::fprintf(metrics,
                     "{\"type\": \"train\", \"step\": %lld, \"loss\": %s, \"lr\": %s, \"grad_norm\": %s, "
                     "\"tok_per_s\": %s, \"mfu\": %s, \"mean_k\": %s, \"imbalance\": %s, \"k_per_layer\": %s, "
                     "\"arena_mb\": %s, \"t_compute\": %s, \"t_dispatch\": %s, \"t_sync\": %s, \"t_optim\": %s}\n",
                     (long long)done, json_number(ce).c_str(), json_number(lr).c_str(), json_number(gnorm).c_str(),
                     json_number(tps).c_str(), json_number(mfu).c_str(), json_number(mean_k).c_str(),
                     json_number(imbalance).c_str(), kl.c_str(), json_number(arena_mb).c_str(),
                     json_number(t_compute / n_steps).c_str(), json_number(t_dispatch / n_steps).c_str(),
                     json_number(t_sync / n_steps).c_str(), json_number(t_optim / n_steps).c_str());
        flush_metrics();
      }
      interval_secs = interval_flops = 0;
      interval_tokens = interval_steps = 0;
      t_compute = t_dispatch = t_sync = t_optim = 0;
    }
    if (o.eval_every > 0 && done % o.eval_every == 0 && done != o.steps) run_eval(done);
    const bool saved_now = (o.save_every > 0 && done % o.save_every == 0) || done == o.steps;
    if (saved_now) save(done);
    // Stop requests (Slurm's --signal warning, scancel, preemption): every rank agrees with one
    // all-reduce, finishes this same step, checkpoints and exits cleanly.
    const int agreed = int(world.all_reduce_max(double(stop_signal() + (io_error.empty() ? 0 : 1000))));
    if (agreed >= 1000) {  // rank 0 could not write its log or metrics
      if (root) throw AgreedError(io_error);
      throw ReportedError("rank 0 failed");
    }
    const int sig = agreed;
    if (sig != 0 && done < o.steps) {
      if (!saved_now) save(done);
      say(fmt("anyk: caught %s at step %lld: checkpoint written to %s/%s; exiting", stop_signal_name(sig),
              (long long)done, checkpoints_dir(o.run_dir).c_str(), step_dir_name(done).c_str()));
      const char* requeue = std::getenv("ANYK_REQUEUE_ON_SIGNAL");
      const char* job = std::getenv("SLURM_JOB_ID");
      if (root && requeue && std::string(requeue) == "1" && job) {
        const std::string cmd = std::string("scontrol requeue ") + job;
        say(fmt("anyk: requeueing job %s (%s)", job, std::system(cmd.c_str()) == 0 ? "ok" : "failed"));
      }
      raise_io_error();
      return 0;
    }
  }

  const LM& em = eval_model();  // collective: gathers the experts onto rank 0
  // Rank 0 alone saves model.h5 and runs the sweep; the other ranks wait for its outcome, so a
  // failure (a full disk) ends every rank with one message and no MPI_Abort.
  agree_or_throw(world, [&] {
    if (!root) return;
    raise_io_error();
    save_weights(o.run_dir + "/model.h5", em);
    say("saved " + o.run_dir + "/model.h5");

    // K-sweep: every uniform K on the same val windows.
    std::vector<EvalResult> rs;
    for (int k = 1; k <= E; ++k) {
      std::vector<int> kk(L, k);
      rs.push_back(evaluate(em, val, kk, B, o.eval_windows, arena, "sweep"));
    }
    say(fmt("K-sweep on %lld val windows of %d tokens:", (long long)rs[0].windows, T));
    for (const auto& line : result_table(rs, lm.config().vocab == 256)) say(line);
    {  // The context-free baseline: the entropy of the training tokens' frequencies.
      std::vector<double> hist(size_t(lm.config().vocab), 0.0);
      for (uint16_t t : *p.train_tokens) hist[t] += 1;
      double H = 0, n = double(p.train_tokens->size());
      for (double c : hist)
        if (c > 0) H -= c / n * std::log2(c / n);
      say(fmt("unigram entropy of the training tokens: %.4f bits/%s (a model without context)", H,
              lm.config().vocab == 256 ? "byte" : "token"));
    }
    write_text_file(o.run_dir + "/sweep.json", results_json(rs));
    for (const auto& r : rs)
      std::fprintf(metrics, "{\"type\": \"sweep\", \"k\": %d, \"val_loss\": %s, \"bits_per_byte\": %s}\n", r.k[0],
                   json_number(r.loss).c_str(), json_number(r.bits()).c_str());
    flush_metrics();
    raise_io_error();
  });
  return 0;
}

}  // namespace anyk::launch
