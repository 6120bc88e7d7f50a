// `anyk eval` (see eval_command.h): options, the model source, then one mode: settings (--k,
// --layer-k, --sweep, --budget), --analyze or --frontier.
#include "launch/eval_command.h"

#include <omp.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "data/shard.h"
#include "data/token_shards.h"
#include "eval/analysis.h"
#include "eval/evaluate.h"
#include "eval/frontier.h"
#include "io/checkpoint.h"
#include "io/fsio.h"
#include "io/hf.h"
#include "io/weights.h"
#include "launch/tokenizer.h"
#include "launch/threads.h"
#include "launch/options.h"
#include "core/check.h"
#include "runtime/devices.h"

namespace anyk::launch {

using eval::EvalResult;

namespace {

struct EvalArgs {
  std::string run_dir, data_dir, k_list, layer_k, json_path, checkpoint, weights;
  bool sweep = false, analyze = false, frontier = false;
  std::string frontier_budgets = "1.5,2.5,3.5";
  int gen_tokens = 64;
  double budget = 0;
  std::string csv_path, plot_path;
  int64_t eval_windows = kDefaultEvalWindows;
  int batch = 0, threads = 0;
  std::string device = "cpu", precision = "f32";
};

void add_eval_options(po::options_description& desc, EvalArgs& a) {
  desc.add_options()("run-dir", po::value(&a.run_dir), "run directory holding config.ini and model.h5")(
      "checkpoint", po::value(&a.checkpoint),
      "evaluate a checkpoint: its step directory, a `latest` file, or `latest` (with --run-dir)")(
      "weights", po::value(&a.weights),
      "evaluate a weights file (a model.h5 or a consolidated checkpoint) or a Mixtral directory (anyk convert "
      "--to hf)")(
      "data", po::value(&a.data_dir), "data directory holding val.bin or val_*.bin shards")(
      "k", po::value(&a.k_list), "comma-separated K values, each used by every layer (e.g. 1,2,4)")(
      "layer-k", po::value(&a.layer_k), "one K per layer, comma-separated (length = layers)")(
      "sweep", po::bool_switch(&a.sweep), "every uniform K = 1..experts")(
      "budget", po::value(&a.budget),
      "average K per layer: greedy per-layer allocation (start at K=1, give one more expert to the "
      "layer that gains most) reported next to the most even schedule of the same cost")(
      "analyze", po::bool_switch(&a.analyze),
      "router analysis at --k (one value; default: the run's largest K): expert load per layer, "
      "router sharpness (top-1 probability, top-K mass, entropy), co-activated pairs, Spearman "
      "stability of the ranking across K")(
      "frontier", po::bool_switch(&a.frontier),
      "cost/quality frontier: bits per byte beside measured KV-cache decode tokens/s and FLOPs per "
      "token, for K = 1..experts and the greedy schedules of --frontier-budgets (--json, --plot)")(
      "frontier-budgets", po::value(&a.frontier_budgets)->default_value("1.5,2.5,3.5"),
      "average-K budgets of the frontier's greedy per-layer schedules")(
      "gen-tokens", po::value(&a.gen_tokens)->default_value(64), "tokens generated per frontier speed run")(
      "json", po::value(&a.json_path), "also write the results to this JSON file")(
      "csv", po::value(&a.csv_path), "also write the results as CSV (name,k,val_loss,bits_per_byte)")(
      "plot", po::value(&a.plot_path), "with --sweep: a PNG plot of bits per byte against K "
                                       "(tools/plot_sweep.py, needs python3-matplotlib)")(
      "eval-windows", po::value(&a.eval_windows)->default_value(kDefaultEvalWindows), "validation windows (0 = all)")(
      "batch", po::value(&a.batch)->default_value(0), "windows per forward (0 = the run's --batch)")(
      "threads", po::value(&a.threads)->default_value(0), kThreadsHelp);
  add_device_options(desc, a.device, a.precision);
}

void check_eval_args(const EvalArgs& a, const CommandOptions& cmd) {
  ANYK_CHECK(a.checkpoint.empty() || a.weights.empty(), "give at most one of --checkpoint, --weights");
  ANYK_CHECK(!a.run_dir.empty() || !a.checkpoint.empty() || !a.weights.empty(),
             "--run-dir, --checkpoint or --weights is required " << cmd.hint());
  cmd.require(!a.data_dir.empty(), "data");
  const int modes = int(!a.k_list.empty() && !a.analyze) + int(!a.layer_k.empty()) + int(a.sweep) +
                    int(a.budget != 0) + int(a.analyze) + int(a.frontier);
  ANYK_CHECK(modes == 1, "give exactly one of --k, --layer-k, --sweep, --budget, --analyze, --frontier "
                             << cmd.hint());
  ANYK_CHECK(a.plot_path.empty() || a.sweep || a.frontier, "--plot needs --sweep or --frontier");
  ANYK_CHECK(a.eval_windows >= 0, "--eval-windows " << a.eval_windows << " must be >= 0 (0 = all)");
  ANYK_CHECK(a.batch >= 0, "--batch " << a.batch << " must be >= 0");
  ANYK_CHECK(a.threads >= 0, "--threads " << a.threads << " must be >= 0");
  (void)parse_device(a.device), (void)parse_bf16(a.precision);  // name the choices on anything else
}

// The model to evaluate and the options it was trained with.
struct EvalSource {
  TrainOptions o;
  ModelConfig mc;
  std::string ckpt_dir;
  io::CheckpointMeta meta;
};

// The model config: from the run's config.ini (run-dir mode), else from the file's attributes;
// the other options (the default --batch) from the saved config text where there is one.
EvalSource read_source(const EvalArgs& a) {
  EvalSource s;
  if (!a.checkpoint.empty()) {
    s.ckpt_dir = io::resolve_checkpoint(a.checkpoint, a.run_dir);
    s.meta = io::read_checkpoint_meta(s.ckpt_dir);
    read_train_config_text(s.meta.config_ini, s.ckpt_dir + "/meta.h5 attribute config_ini", s.o);
    s.mc = s.meta.model;
  } else if (!a.weights.empty() && io::is_hf_dir(a.weights)) {  // a Mixtral directory (convert --to hf)
    s.mc = io::hf_config(a.weights);
    if (!a.run_dir.empty() && std::filesystem::is_regular_file(a.run_dir + "/config.ini"))
      read_train_config(a.run_dir + "/config.ini", s.o);
    s.o.tokenizer_hash = data::dir_tokenizer_hash(a.weights);  // the directory's tokenizer.model, or bytes
  } else if (!a.weights.empty()) {
    s.mc = io::weights_config(a.weights);
    if (!read_weights_config_ini(a.weights, s.o) && !a.run_dir.empty() &&
        std::filesystem::is_regular_file(a.run_dir + "/config.ini"))
      read_train_config(a.run_dir + "/config.ini", s.o);
    merge_weights_tokenizer(s.o, a.weights);
  } else {
    const std::string cfg_path = a.run_dir + "/config.ini";
    ANYK_CHECK(std::filesystem::is_regular_file(cfg_path),
               cfg_path << " not found hint: --run-dir must be a directory written by anyk train");
    read_train_config(cfg_path, s.o);
    if (std::filesystem::is_regular_file(a.run_dir + "/model.h5")) merge_weights_tokenizer(s.o, a.run_dir + "/model.h5");
  }
  s.o.data = a.data_dir;
  s.o.run_dir = a.run_dir.empty() ? "." : a.run_dir;
  s.o.threads = a.threads;
  validate_train_options(s.o);
  if (a.checkpoint.empty() && a.weights.empty()) s.mc = model_config(s.o);
  s.mc.validate();
  return s;
}

// The K settings of --sweep, --k and --layer-k (none for the other modes).
std::vector<std::vector<int>> settings_of(const EvalArgs& a, int L, int E) {
  std::vector<std::vector<int>> settings;
  if (a.budget != 0 || a.analyze || a.frontier) return settings;  // chosen after the model is loaded
  if (a.sweep) {
    for (int k = 1; k <= E; ++k) settings.push_back(std::vector<int>(L, k));
  } else if (!a.k_list.empty()) {
    for (int k : parse_int_list(a.k_list, "k")) {
      ANYK_CHECK(k >= 1 && k <= E, "--k " << k << " is outside [1, experts=" << E << "]");
      settings.push_back(std::vector<int>(L, k));
    }
  } else {
    std::vector<int> ks = parse_int_list(a.layer_k, "layer-k");
    ANYK_CHECK(int(ks.size()) == L, "--layer-k has " << ks.size() << " values but the model has " << L << " layers");
    for (int k : ks) ANYK_CHECK(k >= 1 && k <= E, "--layer-k value " << k << " is outside [1, experts=" << E << "]");
    settings.push_back(ks);
  }
  return settings;
}

// The K values of every mode that has them, against the model's experts and layers.
void check_k_values(const EvalArgs& a, int L, int E) {
  settings_of(a, L, E);
  ANYK_CHECK(a.budget == 0 || (a.budget >= 1 && a.budget <= E),
             "--budget " << a.budget << " must be in [1, experts=" << E << "]");
  if (a.frontier)
    for (double b : parse_double_list(a.frontier_budgets, "frontier-budgets"))
      ANYK_CHECK(b >= 1 && b <= E, "--frontier-budgets value " << b << " is outside [1, experts=" << E << "]");
}

// --plot runs tools/plot_*.py: matplotlib must import, or the run would end without its plot.
void check_plotting() {
  const int rc = std::system("/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1");
  ANYK_CHECK(rc == 0, "--plot needs Python's matplotlib, which /usr/bin/python3 cannot import hint: apt-get "
                      "install python3-matplotlib (tools/deps.sh installs it), or leave out --plot");
}

// Measures the frontier, prints its table, writes JSON and the plot when asked.
int frontier_mode(const LM& lm, const data::Loader& val, const eval::FrontierOptions& fo, Arena& arena,
                  const std::string& label, const EvalArgs& a) {
  auto ps = eval::measure_frontier(lm, val, fo, arena);
  std::printf("%s: cost/quality frontier on %lld val windows of %d tokens; decode speed: median of %d runs of %d "
              "tokens after a %d-token prompt, 1 sequence\n",
              label.c_str(), (long long)ps[0].eval.windows, lm.config().seq_len, fo.rounds, fo.gen_tokens,
              std::min(fo.prompt_tokens, lm.config().seq_len));
  for (const auto& line : eval::frontier_table(ps)) std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  const std::string js = eval::frontier_json(ps);
  if (!a.json_path.empty()) io::write_file_atomic(a.json_path, js);
  if (!a.plot_path.empty()) run_plot("plot_frontier.py", a.plot_path, label, js);
  return 0;
}

std::string shortest(double v) {
  char buf[64];
  return std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
}

// Prints the results table and writes --json, --csv and --plot.
void report_results(const std::vector<EvalResult>& rs, const std::string& source, const ModelConfig& mc,
                    const EvalArgs& a) {
  std::printf("%s: %lld val windows of %d tokens\n", source.c_str(), (long long)rs[0].windows, mc.seq_len);
  for (const auto& line : eval::result_table(rs, mc.vocab == 256)) std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  if (!a.json_path.empty()) io::write_file_atomic(a.json_path, eval::results_json(rs));
  if (!a.csv_path.empty()) {
    std::string csv = "name,k,val_loss,bits_per_byte\n";
    for (const auto& r : rs) {
      std::string ks;
      for (size_t i = 0; i < r.k.size(); ++i) ks += (i ? ";" : "") + std::to_string(r.k[i]);
      csv += "\"" + r.name + "\"," + ks + "," + shortest(r.loss) + "," + shortest(r.bits()) + "\n";
    }
    io::write_file_atomic(a.csv_path, csv);
  }
  if (!a.plot_path.empty()) run_plot("plot_sweep.py", a.plot_path, source, eval::results_json(rs));
}

// Runs the chosen mode on the loaded model.
int run_mode(const LM& lm, const data::Loader& val, const EvalSource& src, const std::string& source,
             const EvalArgs& a) {
  Arena arena(size_t(64) << 20, lm.params().device());
  const int eb = a.batch > 0 ? a.batch : src.o.batch;
  const int L = src.mc.layers;
  if (a.frontier) {
    eval::FrontierOptions fo;
    fo.budgets = parse_double_list(a.frontier_budgets, "frontier-budgets");
    fo.gen_tokens = a.gen_tokens;
    fo.batch = eb;
    fo.windows = a.eval_windows;
    return frontier_mode(lm, val, fo, arena, source, a);
  }
  if (a.analyze) {
    int K = src.o.k_strategy == "fixed" || src.o.k_strategy == "emoe" ? src.o.k : src.o.k_max;
    if (!a.k_list.empty()) {
      auto ks = parse_int_list(a.k_list, "k");
      ANYK_CHECK(ks.size() == 1, "--analyze takes one --k value, got " << a.k_list);
      K = ks[0];
    }
    std::string js = eval::analyze_router(lm, val, K, eb, a.eval_windows, arena);
    if (!a.json_path.empty()) io::write_file_atomic(a.json_path, js);
    return 0;
  }
  std::vector<EvalResult> rs;
  if (a.budget != 0) {
    eval::BudgetResult br = eval::greedy_budget(lm, val, a.budget, eb, a.eval_windows, arena);
    std::printf("greedy allocation for an average K of %g over %d layers:\n", a.budget, L);
    for (const auto& line : br.trace) std::printf("  %s\n", line.c_str());
    br.greedy.name = "greedy " + br.greedy.name;
    br.balanced.name = "even " + br.balanced.name;
    rs = {br.greedy, br.balanced};
  }
  for (const auto& k : settings_of(a, L, src.mc.experts))
    rs.push_back(eval::evaluate(lm, val, k, eb, a.eval_windows, arena));
  report_results(rs, source, src.mc, a);
  return 0;
}

}  // namespace

void run_plot(const std::string& script, const std::string& plot_path, const std::string& label,
              const std::string& json) {
  const std::string tmp = plot_path + ".json";
  io::write_file_atomic(tmp, json);
  const std::string cmd = "/usr/bin/python3 '" + std::string(ANYK_SOURCE_DIR) + "/tools/" + script + "' --out '" +
                          plot_path + "' --label '" + label + "' '" + tmp + "'";
  int rc = std::system(cmd.c_str());
  std::filesystem::remove(tmp);
  ANYK_CHECK(rc == 0, "plotting failed (" << cmd << ") hint: apt-get install python3-matplotlib");
}

std::vector<double> parse_double_list(const std::string& text, const std::string& option) {
  std::vector<double> out;
  size_t i = 0;
  while (i <= text.size()) {
    size_t j = text.find(',', i);
    if (j == std::string::npos) j = text.size();
    std::string item = text.substr(i, j - i);
    char* end = nullptr;
    double v = item.empty() ? 0 : std::strtod(item.c_str(), &end);
    ANYK_CHECK(!item.empty() && end == item.c_str() + item.size(),
               "--" << option << " '" << text << "': '" << item
                    << "' is not a number hint: use a comma-separated list such as 1.5,2.5");
    out.push_back(v);
    i = j + 1;
  }
  return out;
}

int eval_command(int argc, char** argv) {
  EvalArgs a;
  po::options_description desc(
      "anyk eval (--run-dir DIR | --checkpoint DIR|latest | --weights FILE.h5) --data DIR\n"
      "          (--k 1,2,4 | --layer-k 4,3,2,1 | --sweep) [options]\n"
      "Validation loss and bits per byte of a trained model at the given K settings. The model config\n"
      "comes from the run's config.ini, or from the checkpoint's / weights file's attributes");
  CommandOptions cmd("eval", desc);
  add_eval_options(desc, a);
  if (!cmd.parse(argc, argv)) return 0;
  as_usage_error([&] { check_eval_args(a, cmd); });
  if (!a.plot_path.empty()) check_plotting();  // before the run, not after it
  const EvalSource src = read_source(a);
  as_usage_error([&] { check_k_values(a, src.mc.layers, src.mc.experts); });  // before the data is read

  check_data_dir(a.data_dir);
  check_data_tokenizer(a.data_dir, src.o, "the model " + (a.checkpoint.empty() ? a.weights.empty() ? a.run_dir : a.weights
                                                                               : src.ckpt_dir));
  data::Loader val(data::TokenShards::open(a.data_dir, "val", src.mc.vocab), src.mc.seq_len, uint64_t(src.o.seed));

  use_threads(a.threads);
  const Device dev = parse_device(a.device);
  const std::string device_line = use_device(dev, parse_bf16(a.precision));
  if (dev != Device::CPU) std::fprintf(stderr, "device: %s\n", device_line.c_str());  // stdout: the results
  LocalDispatcher disp(src.mc.experts);
  LM lm(src.mc, disp, dev);
  std::string source;
  if (!src.ckpt_dir.empty()) {
    source = src.ckpt_dir;
    io::read_checkpoint_tensors(src.ckpt_dir, src.meta, io::dense_refs(lm.params(), nullptr, 0),
                                io::expert_refs(lm.params(), nullptr, 1, 0));
  } else {
    source = a.weights.empty() ? a.run_dir : a.weights;
    if (!a.weights.empty() && io::is_hf_dir(a.weights))
      io::load_hf_weights(a.weights, lm);
    else
      io::load_weights(a.weights.empty() ? a.run_dir + "/model.h5" : a.weights, lm);
  }
  announce_threads("eval", stdout);
  return run_mode(lm, val, src, source, a);
}

}  // namespace anyk::launch
