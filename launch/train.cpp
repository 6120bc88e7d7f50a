// `anyk train`: options, then every check that can refuse the run (data, run dir, init weights,
// checkpoint) on every rank before anything is allocated or written; then the Trainer.
#include "launch/train.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/token_shards.h"
#include "io/checkpoint.h"
#include "io/h5.h"
#include "io/hf.h"
#include "io/weights.h"
#include "launch/options.h"
#include "launch/threads.h"
#include "launch/rundir.h"
#include "launch/signals.h"
#include "launch/tokenizer.h"
#include "launch/trainer.h"
#include "parallel/comm.h"
#include "core/check.h"
#include "runtime/devices.h"

namespace anyk::launch {

namespace fs = std::filesystem;

namespace {

std::string usage_line() {
  return "anyk train --data DIR --run-dir DIR [--config FILE] [options]\n"
         "Train an elastic-K MoE language model. Flags override values from --config (INI with\n"
         "the same long names, e.g. `dim = 128`). Writes train.log, metrics.jsonl, config.ini,\n"
         "model.h5, sweep.json and checkpoints/step_<n>/ into the run dir and ends with a K-sweep table";
}

// Stores --config's INI values under those of the command line (flags win over the file).
void store_config_file(const std::string& path, const po::options_description& desc, po::variables_map& vm) {
  ANYK_CHECK(!fs::is_directory(path), "--config " << path << " is a directory, not an INI file hint: pass a file, "
                                                             "e.g. RUN_DIR/config.ini");
  ANYK_CHECK(fs::is_regular_file(path), "--config " << path << " not found hint: check the path");
  std::ifstream file(path);
  ANYK_CHECK(file, "cannot read --config " << path << " hint: check the path");
  std::stringstream text;
  text << file.rdbuf();
  check_option_text(text.str(), "config file " + path);  // before Boost sees it (see options.h)
  std::istringstream in(upgrade_config_text(text.str()));  // old key names (top-p) under their new ones
  try {
    // store() keeps values already set on the command line: flags win over the file.
    po::store(po::parse_config_file(in, desc, false), vm);
  } catch (const po::error& e) {
    ANYK_USAGE_FAIL("in config file " << path << ": " << e.what() << " hint: see anyk train --help");
  }
}

// Options, the INI text of config.ini, and the library configs. Returns false after --help.
bool parse_options(int argc, char** argv, TrainSetup& p, int world_size, bool print_help) {
  TrainOptions& o = p.o;
  OptionTable table(usage_line());
  CommandOptions cmd("train", table.desc());
  bind_train_options(table, o);
  // --resume is bound here, not in the table, so config.ini (the table's INI) never carries it.
  table.desc().add_options()("config", po::value<std::string>(&o.config),
                             "INI file of these options (flags given here win)")(
      "resume", po::value<std::string>(&o.resume),
      "continue from a checkpoint: its directory, a `latest` file, or `latest` "
      "(= run_dir/checkpoints/latest); the model shape and --seed must match it")(
      "overwrite", po::bool_switch(&o.overwrite),
      "start a new run in a --run-dir that already holds one: the old run is moved aside to "
      "RUN_DIR.overwritten-<UTC time>, never deleted");
  const bool run = cmd.parse(argc, argv, print_help, [&](po::variables_map& vm) {
    if (vm.count("config")) store_config_file(vm["config"].as<std::string>(), table.desc(), vm);
  });
  if (!run) return false;
  // The default warm-up must not make a short run (--steps 10) an error; an explicit one may.
  if (cmd.vm()["warmup"].defaulted() && o.warmup > o.steps) o.warmup = o.steps;
  resolve_train_tokenizer(o);  // before validation: vocab 0 becomes a SentencePiece model's size
  as_usage_error([&] {  // only option values from here on: a failure is a usage error (exit 2)
    validate_train_options(o);
    o.threads = use_threads(o.threads);  // resolved before config.ini records it
    check_comm_device(o, parse_device(o.device));
    check_layout(world_size, o.ep, o.experts);
    p.model = model_config(o);
    p.model.validate();
    p.kcfg = k_schedule_config(o);
    KSchedule check_schedule(p.kcfg, o.layers, o.experts);  // throws on an invalid combination
    p.lr = lr_schedule(o);
    p.lr.validate();
  });
  p.config_ini = "# anyk train: fully resolved options (usable with --config)\n" + table.to_ini();
  return true;
}

// The shards of each split (train.bin or train_*.bin ..., data/token_shards.h), mapped read-only
// and never copied whole; each split needs one shard at least one window long.
void read_data(TrainSetup& p) {
  const TrainOptions& o = p.o;
  check_data_dir(o.data);
  p.train_tokens = data::TokenShards::open(o.data, "train", o.vocab);
  p.val_tokens = data::TokenShards::open(o.data, "val", o.vocab);
  auto longest = [](const data::TokenShards& s) {
    int64_t m = 0;
    for (int i = 0; i < s.num_shards(); ++i) m = std::max(m, s.shard(i).n);
    return m;
  };
  ANYK_CHECK(longest(*p.train_tokens) >= int64_t(o.seq_len) + 1,
             o.data << ": no train shard holds one window of --seq-len " << o.seq_len << " + 1 tokens (longest: "
                    << p.train_tokens->shard(0).name << " among " << p.train_tokens->num_shards() << ", "
                    << longest(*p.train_tokens) << " tokens)");
  ANYK_CHECK(longest(*p.val_tokens) >= int64_t(o.seq_len) + 1,
             o.data << ": no val shard holds one window of --seq-len " << o.seq_len << " + 1 tokens ("
                    << longest(*p.val_tokens) << " tokens at most) hint: raise --val-fraction in anyk prepare or "
                    << "lower --seq-len");
}

// The run dir must be free unless --resume or --overwrite says otherwise.
void check_run_dir(const TrainOptions& o) {
  ANYK_CHECK(!fs::exists(o.run_dir) || fs::is_directory(o.run_dir),
             "--run-dir " << o.run_dir << " exists and is not a directory");
  ANYK_USAGE_CHECK(!(o.overwrite && !o.resume.empty()),
             "--overwrite and --resume exclude each other hint: --resume continues the run in --run-dir; "
             "--overwrite moves it aside and starts a new one");
  if (!o.resume.empty() || o.overwrite) return;
  const std::vector<std::string> found = run_files(o.run_dir);
  if (found.empty()) return;
  // A live run: name it (the lock file records its pid and host) rather than suggest --resume.
  const std::string holder = run_dir_holder(o.run_dir);
  ANYK_CHECK(holder.empty(), "run dir " << o.run_dir << " is in use by " << holder
                                        << " hint: that run is still going: wait for it to finish, stop it, "
                                           "or choose another --run-dir");
  std::string list;
  for (const auto& f : found) list += (list.empty() ? "" : ", ") + f;
  ANYK_FAIL("--run-dir " << o.run_dir << " already holds a run (" << list << ") hint: pass --resume latest "
                         << "to continue it, --overwrite to move it aside and start a new run, or choose "
                            "another --run-dir");
}

// --init-weights and --resume: every check that can refuse the file, before any file is written.
void check_sources(TrainSetup& p) {
  const TrainOptions& o = p.o;
  if (!o.init_weights.empty()) {
    ANYK_USAGE_CHECK(o.resume.empty(), "--init-weights and --resume exclude each other hint: --resume restores "
                                 "weights and optimizer state; --init-weights starts a new run from weights");
    if (io::is_hf_dir(o.init_weights)) {  // a Hugging Face Mixtral directory (anyk convert --to hf)
      io::h5::check_same_shape(io::hf_config(o.init_weights), p.model, o.init_weights + "/config.json", "this run");
      TrainOptions src;
      src.tokenizer_hash = data::dir_tokenizer_hash(o.init_weights);
      check_data_tokenizer(o.data, src, "--init-weights " + o.init_weights);
    } else {
      ANYK_CHECK(fs::is_regular_file(o.init_weights),
                 "--init-weights " << o.init_weights << " is not a file hint: pass a run's model.h5, a "
                                      "consolidated checkpoint (anyk convert --to consolidated) or a Mixtral "
                                      "directory (anyk convert --to hf)");
      io::h5::check_same_shape(io::weights_config(o.init_weights), p.model, o.init_weights, "this run");
      TrainOptions src;  // files without a tokenizer hash predate SentencePiece: bytes
      read_weights_config_ini(o.init_weights, src);
      merge_weights_tokenizer(src, o.init_weights);
      check_data_tokenizer(o.data, src, "--init-weights " + o.init_weights);
    }
  }
  if (o.resume.empty()) return;
  p.resume_dir = io::resolve_checkpoint(o.resume, o.run_dir);
  p.resume = io::read_checkpoint_meta(p.resume_dir);
  const std::string meta_path = (fs::path(p.resume_dir) / "meta.h5").string();
  io::h5::check_same_shape(p.resume.model, p.model, meta_path, "this run");
  TrainOptions src;
  read_train_config_text(p.resume.config_ini, meta_path + " attribute config_ini", src);
  check_data_tokenizer(o.data, src, "the checkpoint " + p.resume_dir);
  ANYK_CHECK(p.resume.seed == o.seed, "--seed " << o.seed << " differs from the seed " << p.resume.seed << " in "
                                                << meta_path << " hint: resume with --seed " << p.resume.seed
                                                << " (it keys the data windows and the K draws)");
  data::check_same_shards(*p.train_tokens, p.resume.train_shards, meta_path);
  ANYK_CHECK(p.resume.step < o.steps, meta_path << " is at step " << p.resume.step << " and --steps is " << o.steps
                                                << ": nothing left to train hint: raise --steps");
}

}  // namespace

int train_command(int argc, char** argv) {
  // MPI is always up (a single process is a world of one); every rank validates everything.
  Comm world = Comm::world();
  install_stop_handlers();  // after MPI_Init, so ours replace any the MPI library installed
  TrainSetup p;
  bool run = true;
  // Every check before any allocation or file: options, data, checkpoint meta, then memory (in
  // the Trainer). A failure on any rank stops every rank with one message (agree_or_throw).
  agree_or_throw(world, [&] {
    run = parse_options(argc, argv, p, world.size(), world.rank() == 0);
    if (!run) return;  // --help
    read_data(p);
    check_run_dir(p.o);
    check_sources(p);
    p.device = parse_device(p.o.device);  // then the GPU (or the checked pool) for this rank
    // bf16 on the CUDA device also rounds the GEMMs' inputs; on the others it is bf16 activation
    // storage only (their GEMMs stay f32), which the Trainer sets on its tape.
    const bool bf16 = parse_bf16(p.o.precision);
    p.device_line = use_device(p.device, bf16 && p.device == Device::CUDA, &p.device_free);
    if (bf16) p.device_line += p.device == Device::CUDA ? "; activations stored in bf16"
                                                        : "; --precision bf16: activations stored in bf16, GEMMs f32 "
                                                          "on this device";
  });
  if (!run) return 0;
  Trainer trainer(std::move(p), world);
  return trainer.run();
}

}  // namespace anyk::launch
