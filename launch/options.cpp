// Train options: the option table, INI round trip, validation and conversion to library configs.
#include "launch/options.h"
#include "launch/threads.h"

#include <iostream>

#include "io/h5.h"
#include "model/lm.h"
#include "parallel/comm.h"
#include "parallel/dispatcher.h"
#include "parallel/groups.h"

#include <omp.h>

#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/check.h"
#include "runtime/devices.h"

namespace anyk::launch {

namespace {

std::string value_string(const std::string& v) { return v; }
std::string value_string(bool v) { return v ? "true" : "false"; }
template <class T> std::string value_string(T v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest form that reads back exactly
  return std::string(buf, r.ptr);
}

}  // namespace

template <class T> void OptionTable::add(const char* name, T* field, const char* help) {
  desc_.add_options()(name, po::value<T>(field)->default_value(*field, value_string(*field)), help);
  writers_.emplace_back(name, [field] { return value_string(*field); });
}

void OptionTable::add_switch(const char* name, bool* field, const char* help) {
  desc_.add_options()(name, po::bool_switch(field)->default_value(*field), help);
  writers_.emplace_back(name, [field] { return value_string(*field); });
}

std::string OptionTable::to_ini() const {
  std::string s;
  for (const auto& [name, w] : writers_) s += name + " = " + w() + "\n";
  return s;
}

int cli_style() {
  using namespace po::command_line_style;
  return default_style & ~allow_guessing;
}

void check_option_text(const std::string& text, const std::string& what) {
  for (size_t i = text.find('%'); i != std::string::npos; i = text.find('%', i + 1)) {
    size_t j = i + 1;
    while (j < text.size() && ((text[j] >= 'a' && text[j] <= 'z') || text[j] == '_')) ++j;
    ANYK_CHECK(j == i + 1 || j == text.size() || text[j] != '%',
               what << " holds '" << text.substr(i, j - i + 1) << "', which anyk's option parser "
                    << "(Boost.Program_options) cannot report errors about hint: remove the %...% text");
  }
}

po::parsed_options parse_command_line(int argc, char** argv, const po::options_description& desc,
                                      const std::string& command) {
  for (int i = 1; i < argc; ++i) check_option_text(argv[i], "argument " + std::to_string(i) + " of anyk " + command);
  po::parsed_options parsed = po::command_line_parser(argc, argv).options(desc).style(cli_style()).run();
  for (const po::option& opt : parsed.options)
    ANYK_USAGE_CHECK(opt.position_key < 0, "unexpected argument '" << (opt.value.empty() ? "" : opt.value[0])
                                                                   << "' hint: options are --name value; see anyk "
                                                                   << command << " --help");
  return parsed;
}

CommandOptions::CommandOptions(std::string command, po::options_description& desc)
    : command_(std::move(command)), desc_(desc) {
  desc_.add_options()("help,h", po::bool_switch(&help_), "show this help");
}

namespace {

// Options renamed, still accepted on the command line with a one-line note on stderr.
struct RenamedOption {
  const char* old_name;
  const char* new_name;
  const char* why;
};
constexpr RenamedOption kRenamedOptions[] = {
    {"top-p", "expert-top-p", "it sets how many experts a token uses, not nucleus sampling"},
};

// argv with each renamed option (--old or --old=value) under its new name, when desc knows it.
std::vector<std::string> upgrade_argv(int argc, char** argv, const po::options_description& desc, bool note) {
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i)
    for (const RenamedOption& r : kRenamedOptions) {
      const std::string old = std::string("--") + r.old_name;
      if ((args[i] != old && args[i].rfind(old + "=", 0) != 0) || !desc.find_nothrow(r.new_name, false)) continue;
      args[i] = std::string("--") + r.new_name + args[i].substr(old.size());
      if (note)
        std::fprintf(stderr, "anyk: note: --%s is deprecated, use --%s (%s)\n", r.old_name, r.new_name, r.why);
    }
  return args;
}

}  // namespace

std::string upgrade_config_text(const std::string& text) {
  std::istringstream in(text);
  std::string out;
  for (std::string line; std::getline(in, line);) {
    const size_t b = line.find_first_not_of(" \t");
    for (const RenamedOption& r : kRenamedOptions) {
      const std::string old = r.old_name;
      if (b == std::string::npos || line.compare(b, old.size(), old) != 0) continue;
      const size_t e = line.find_first_not_of(" \t", b + old.size());
      if (e != std::string::npos && line[e] == '=') line = line.substr(0, b) + r.new_name + line.substr(b + old.size());
    }
    out += line + "\n";
  }
  return out;
}

bool CommandOptions::parse(int argc, char** argv, bool print_help,
                           const std::function<void(po::variables_map&)>& before_notify) {
  std::vector<std::string> args = upgrade_argv(argc, argv, desc_, print_help);
  std::vector<char*> ptrs;
  for (std::string& a : args) ptrs.push_back(a.data());
  try {
    po::store(parse_command_line(argc, ptrs.data(), desc_, command_), vm_);
  } catch (const po::error& e) {
    ANYK_USAGE_FAIL(e.what() << " " << hint());
  }
  if (vm_.count("help") && vm_["help"].as<bool>()) {
    if (print_help) std::cout << desc_ << "\n";
    return false;
  }
  if (before_notify) before_notify(vm_);
  try {
    po::notify(vm_);
  } catch (const po::error& e) {
    ANYK_USAGE_FAIL(e.what() << " " << hint());
  }
  return true;
}

void CommandOptions::require(bool given, const std::string& name) const {
  ANYK_USAGE_CHECK(given, "--" << name << " is required " << hint());
}

const char* const kDeviceHelp =
    "where the model runs: cpu, cuda (one GPU per rank, chosen by the node-local rank) or checked (debugging: "
    "the CPU kernels on memory the host cannot read)";
const char* const kPrecisionHelp =
    "f32, or bf16 with --device cuda (bf16 GEMMs, f32 accumulation; weights, moments and checkpoints stay f32)";

const char* const kTrainPrecisionHelp =
    "f32, or bf16: activations stored in bf16 (half their memory; every op computes in f32 from them) and, with "
    "--device cuda, bf16 GEMM inputs with f32 accumulation; weights, gradients, moments, the router's logits, "
    "norm statistics, attention probabilities and checkpoints stay f32";

void add_device_options(po::options_description& desc, std::string& device, std::string& precision) {
  desc.add_options()("device", po::value(&device)->default_value(device), kDeviceHelp)(
      "precision", po::value(&precision)->default_value(precision), kPrecisionHelp);
}

void bind_train_options(OptionTable& t, TrainOptions& o) {
  t.add("data", &o.data, "directory holding train.bin and val.bin, or shards train_*.bin and val_*.bin (llm.c "
                         "format, read in name order, mapped, never copied whole; from `anyk prepare`)");
  t.add("tokenizer", &o.tokenizer, "set by train: the data's SentencePiece model (DATA/tokenizer.model), empty for bytes");
  t.add("tokenizer-hash", &o.tokenizer_hash,
        "set by train: the tokenizer's hash (fnv1a64 of tokenizer.model, or bytes); data, run and weights must agree");
  t.add("run-dir", &o.run_dir, "output directory: train.log, metrics.jsonl, config.ini, model.h5, sweep.json");
  t.add("steps", &o.steps, "optimizer steps");
  t.add("seed", &o.seed, "seed of initialisation, data windows and K draws");
  t.add("layers", &o.layers, "L: transformer blocks");
  t.add("dim", &o.dim, "C: model dimension");
  t.add("heads", &o.heads, "NH: attention heads (must divide dim; head dim even)");
  t.add("experts", &o.experts, "E: experts per MoE layer");
  t.add("expert-hidden", &o.expert_hidden, "H: hidden size of each SwiGLU expert");
  t.add("seq-len", &o.seq_len, "T: tokens per training window");
  t.add("vocab", &o.vocab, "V: vocabulary size (0 = 256 for byte data); every token must be < V");
  t.add("batch", &o.batch, "B: windows per micro-batch");
  t.add("grad-accum", &o.grad_accum, "A: micro-batches per optimizer step");
  t.add("lr", &o.lr, "peak learning rate");
  t.add("min-lr", &o.min_lr, "learning rate at the end of the cosine decay");
  t.add("warmup", &o.warmup, "linear warm-up steps");
  t.add("weight-decay", &o.weight_decay, "AdamW decoupled weight decay (not on norms/embeddings)");
  t.add("grad-clip", &o.grad_clip, "global gradient-norm clip (0 = off)");
  t.add("k-strategy", &o.k_strategy,
        "how many experts are active: fixed, global, micro, layer, layer_weighted, top_p, emoe "
        "(EMoE: --k experts drawn per token from a top pool of size U[--k, --k-ideal])");
  t.add("k-min", &o.k_min, "smallest K drawn (all strategies but fixed and emoe; per-token floor for top_p)");
  t.add("k-max", &o.k_max, "largest K drawn (cap of the per-token K for top_p); <= experts");
  t.add("k", &o.k, "K of the fixed strategy; k_train of emoe");
  t.add("k-ideal", &o.k_ideal, "emoe: largest co-activation pool (0 = min(3 k, experts))");
  t.add("init-weights", &o.init_weights,
        "start from these weights (a model.h5, a consolidated checkpoint or a Mixtral directory from "
        "anyk convert --to hf; optimizer starts fresh), "
        "e.g. to continue a fixed-K model with emoe");
  t.add("tau", &o.tau, "layer_weighted temperature: P(K=k) ~ k^(1/tau)");
  t.add("expert-top-p", &o.top_p,
        "top_p strategy: per token, the smallest k whose top-k router mass >= p (--top-p: deprecated name)");
  t.add("lb-coef", &o.lb_coef, "load-balance loss coefficient");
  t.add("z-coef", &o.z_coef, "router z-loss coefficient");
  t.add("router-kl-weight", &o.router_kl_weight, "EMoE hierarchical router loss weight (-KL(q||U))");
  t.add_switch("no-renormalize", &o.no_renormalize,
               "keep raw softmax mass as gate weights instead of renormalising over the chosen K");
  t.add("log-every", &o.log_every, "log one line every N steps (first and last step always)");
  t.add("eval-every", &o.eval_every, "validation eval every N steps (0 = only the final sweep)");
  t.add("eval-windows", &o.eval_windows, "validation windows per eval (0 = all)");
  t.add("threads", &o.threads, kThreadsHelp);
  t.add("device", &o.device, kDeviceHelp);
  t.add("precision", &o.precision, kTrainPrecisionHelp);
  t.add("ep", &o.ep, "expert-parallel ranks: experts are split over groups of this many ranks, "
                     "world = ep x edp (0 = all ranks)");
  t.add("a2a", &o.a2a, "expert all-to-all: flat (one exchange among the ep ranks) or hier (inside each "
                       "node, then across nodes; docs/hier-a2a.md; ANYK_A2A_NODE_SIZE=n sets n ranks per node)");
  t.add("comm", &o.comm, "how expert rows and gradients travel between ranks: mpi (device buffers staged "
                         "through the host) or nccl (GPU to GPU; needs --device cuda); counts stay on MPI");
  t.add("recompute", &o.recompute, "activation recompute: none, or layer (keep each layer's input and output "
                                   "only and run its forward again in the backward: about one layer's "
                                   "activations alive instead of all, for one more forward; same gradients)");
  t.add("zero", &o.zero, "1: shard the AdamW moments over the data-parallel ranks (ZeRO stage 1: gradients "
                         "reduce-scattered, parameters all-gathered; docs/memory.md); 0: every rank keeps them all");
  t.add_switch("profile", &o.profile, "log the step-time split: compute, dispatch, grad sync, optimizer");
  t.add("save-every", &o.save_every,
        "save a checkpoint to run_dir/checkpoints/step_<n> every N steps (0 = only at the end)");
  t.add("keep", &o.keep, "complete checkpoints to keep; older ones are deleted");
}

void read_train_config(const std::string& path, TrainOptions& o) {
  std::ifstream in(path);
  ANYK_CHECK(in, "cannot read config file " << path << " hint: check the path");
  std::ostringstream text;
  text << in.rdbuf();
  read_train_config_text(text.str(), "config file " + path, o);
}

bool read_weights_config_ini(const std::string& weights, TrainOptions& o) {
  io::h5::Handle f = io::h5::open_file(weights);
  if (!io::h5::attr_exists(f.id, "config_ini")) return false;
  read_train_config_text(io::h5::read_attr_string(f.id, weights, "config_ini"), weights + " attribute config_ini", o);
  return true;
}

void read_train_config_text(const std::string& text, const std::string& what, TrainOptions& o) {
  check_option_text(text, what);
  std::istringstream in(upgrade_config_text(text));
  OptionTable t("config");
  bind_train_options(t, o);
  po::variables_map vm;
  try {
    po::store(po::parse_config_file(in, t.desc(), false), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    ANYK_FAIL("in " << what << ": " << e.what());
  }
}

void validate_train_options(TrainOptions& o) {
  ANYK_CHECK(!o.data.empty(), "--data is required hint: pass the directory made by `anyk prepare`");
  ANYK_CHECK(!o.run_dir.empty(), "--run-dir is required hint: pass a directory for the run's outputs");
  ANYK_CHECK(o.steps >= 1, "--steps " << o.steps << " must be >= 1");
  ANYK_CHECK(o.seed >= 0, "--seed " << o.seed << " must be >= 0");
  auto pos = [](int64_t v, const char* name) {
    ANYK_CHECK(v >= 1, "--" << name << " " << v << " must be >= 1");
  };
  pos(o.layers, "layers");
  pos(o.dim, "dim");
  pos(o.heads, "heads");
  pos(o.experts, "experts");
  pos(o.expert_hidden, "expert-hidden");
  pos(o.seq_len, "seq-len");
  pos(o.batch, "batch");
  pos(o.grad_accum, "grad-accum");
  pos(o.log_every, "log-every");
  ANYK_CHECK(o.vocab >= 0 && o.vocab <= 65536, "--vocab " << o.vocab << " must be in [0, 65536]");
  if (o.vocab == 0) o.vocab = 256;
  ANYK_CHECK(o.eval_every >= 0, "--eval-every " << o.eval_every << " must be >= 0");
  ANYK_CHECK(o.eval_windows >= 0, "--eval-windows " << o.eval_windows << " must be >= 0 (0 = all)");
  ANYK_CHECK(o.threads >= 0, "--threads " << o.threads << " must be >= 0 (0 = the rule of --help)");
  (void)parse_device(o.device), (void)parse_bf16(o.precision);  // name the choices on anything else
  ANYK_CHECK(o.ep >= 0, "--ep " << o.ep << " must be >= 0 (0 = all ranks)");
  parse_a2a(o.a2a);  // names flat and hier on anything else
  parse_comm(o.comm);  // names mpi and nccl on anything else
  parse_recompute(o.recompute);  // names none and layer on anything else
  ANYK_CHECK(o.zero == 0 || o.zero == 1, "--zero " << o.zero << " is not a ZeRO stage hint: use 1 (shard the AdamW "
                                                       "moments over the data-parallel ranks) or 0 (off)");
  ANYK_CHECK(o.save_every >= 0, "--save-every " << o.save_every << " must be >= 0 (0 = only at the end)");
  ANYK_CHECK(o.keep >= 1, "--keep " << o.keep << " must be >= 1");
  ANYK_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr " << o.lr << " must be > 0");
  ANYK_CHECK(o.min_lr >= 0 && o.min_lr <= o.lr,
             "--min-lr " << o.min_lr << " must be in [0, --lr " << o.lr << "]");
  ANYK_CHECK(o.warmup >= 0 && o.warmup <= o.steps,
             "--warmup " << o.warmup << " must be in [0, --steps " << o.steps << "]");
  ANYK_CHECK(o.weight_decay >= 0, "--weight-decay " << o.weight_decay << " must be >= 0");
  ANYK_CHECK(o.grad_clip >= 0, "--grad-clip " << o.grad_clip << " must be >= 0 (0 = off)");
  ANYK_CHECK(o.lb_coef >= 0, "--lb-coef " << o.lb_coef << " must be >= 0");
  ANYK_CHECK(o.z_coef >= 0, "--z-coef " << o.z_coef << " must be >= 0");
  ANYK_CHECK(o.router_kl_weight >= 0, "--router-kl-weight " << o.router_kl_weight << " must be >= 0");
  KStrategy s = parse_k_strategy(o.k_strategy);  // names the valid strategies on failure
  if (s == KStrategy::Fixed || s == KStrategy::EMoE) {
    ANYK_CHECK(o.k >= 1 && o.k <= o.experts,
               "--k " << o.k << " must be in [1, --experts " << o.experts << "]");
    if (s == KStrategy::EMoE)
      ANYK_CHECK(o.k_ideal == 0 || (o.k_ideal >= o.k && o.k_ideal <= o.experts),
                 "--k-ideal " << o.k_ideal << " must be in [--k " << o.k << ", --experts " << o.experts
                              << "] (or 0 for min(3 k, experts))");
  } else {
    ANYK_CHECK(o.k_min >= 1, "--k-min " << o.k_min << " must be >= 1");
    ANYK_CHECK(o.k_max <= o.experts, "--k-max " << o.k_max << " exceeds --experts " << o.experts
                                                << " hint: a token cannot use more experts than exist");
    ANYK_CHECK(o.k_min <= o.k_max, "--k-min " << o.k_min << " exceeds --k-max " << o.k_max);
  }
  ANYK_CHECK(o.tau > 0 && std::isfinite(o.tau), "--tau " << o.tau << " must be > 0");
  ANYK_CHECK(o.top_p > 0 && o.top_p <= 1, "--expert-top-p " << o.top_p << " must be in (0, 1]");
}

void check_comm_device(const TrainOptions& o, Device model_device) {
  ANYK_CHECK(parse_comm(o.comm) == CommKind::Mpi || model_device == Device::CUDA,
             "--comm nccl needs --device cuda (NCCL moves GPU buffers; this run's model is on "
                 << device_name(model_device) << ") hint: add --device cuda, or use --comm mpi");
}

ModelConfig model_config(const TrainOptions& o) {
  ModelConfig c;
  c.vocab = o.vocab == 0 ? 256 : o.vocab;
  c.dim = o.dim;
  c.layers = o.layers;
  c.heads = o.heads;
  c.experts = o.experts;
  c.expert_hidden = o.expert_hidden;
  c.seq_len = o.seq_len;
  c.router.renormalize = !o.no_renormalize;
  c.router.lb_coef = o.lb_coef;
  c.router.z_coef = o.z_coef;
  c.router.kl_coef = o.router_kl_weight;
  c.router.top_p = 0.0;
  c.router.k_min = 1;
  return c;
}

KScheduleConfig k_schedule_config(const TrainOptions& o) {
  KScheduleConfig k;
  k.strategy = parse_k_strategy(o.k_strategy);
  k.k_min = o.k_min;
  k.k_max = o.k_max;
  k.k_fixed = o.k;
  k.k_ideal = o.k_ideal;
  k.tau = o.tau;
  k.top_p = o.top_p;
  k.seed = uint64_t(o.seed);
  return k;
}

LrSchedule lr_schedule(const TrainOptions& o) {
  LrSchedule s;
  s.max_lr = o.lr;
  s.min_lr = o.min_lr;
  s.warmup = o.warmup;
  s.total = o.steps;
  return s;
}

std::vector<int> parse_int_list(const std::string& text, const std::string& option) {
  std::vector<int> out;
  size_t i = 0;
  while (i <= text.size()) {
    size_t j = text.find(',', i);
    if (j == std::string::npos) j = text.size();
    std::string item = text.substr(i, j - i);
    int v = 0;
    auto r = std::from_chars(item.data(), item.data() + item.size(), v);
    ANYK_CHECK(!item.empty() && r.ec == std::errc() && r.ptr == item.data() + item.size(),
               "--" << option << " '" << text << "': '" << item
                    << "' is not an integer hint: use a comma-separated list such as 1,2,4");
    out.push_back(v);
    i = j + 1;
  }
  return out;
}

void check_data_dir(const std::string& dir, const std::string& option) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (fs::is_directory(st)) return;
  if (fs::exists(st)) {
    const fs::path p(dir), parent = p.parent_path().empty() ? fs::path(".") : p.parent_path();
    const bool shard = p.extension() == ".bin";
    ANYK_FAIL(option << " " << dir << " is a file, but a data directory is expected (the train.bin and val.bin that "
                                      "anyk prepare writes) hint: "
                     << (shard ? "pass its directory, " + option + " " + parent.string()
                               : "anyk prepare --input " + dir + " --out DIR, then " + option + " DIR"));
  }
  ANYK_FAIL(option << " " << dir << " does not exist hint: create it with anyk prepare --input TEXT_FILE --out "
                   << dir);
}

}  // namespace anyk::launch
