// Validation loss at forced K, and the `anyk eval` command (loads run_dir/config.ini and
// model.h5, a checkpoint directory, or a weights/consolidated file; evaluates each requested
// setting, prints a table and optionally writes JSON).
#include "launch/evaluate.h"

#include "launch/fsio.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "data/shard.h"
#include "launch/analysis.h"
#include "launch/frontier.h"
#include "launch/checkpoint.h"
#include "launch/h5.h"
#include "launch/options.h"
#include "launch/report.h"
#include "launch/weights.h"
#include "runtime/check.h"

namespace anyk::launch {

double EvalResult::bits() const { return loss / std::log(2.0); }

std::string k_setting_name(std::span<const int> k) {
  bool uniform = true;
  for (int v : k) uniform = uniform && v == k[0];
  std::string s = "K=";
  if (uniform && !k.empty()) return s + std::to_string(k[0]);
  for (size_t i = 0; i < k.size(); ++i) s += (i ? "," : "") + std::to_string(k[i]);
  return s;
}

EvalResult evaluate(const LM& lm, const data::Loader& val, std::span<const int> k, int B,
                    int64_t max_windows, Arena& arena, const std::string& label,
                    const std::function<void(const ForwardStats&)>& on_batch) {
  ANYK_CHECK(lm.config().router.top_p == 0,
             "evaluate needs a forced-K router (top_p = 0), got top_p " << lm.config().router.top_p);
  ANYK_CHECK(B >= 1, "eval batch " << B << " must be >= 1");
  const int T = val.seq_len();
  int64_t n = val.num_eval_windows();
  ANYK_CHECK(n >= 1, "the validation split is shorter than one window of " << T + 1
                                                                           << " tokens hint: lower --seq-len");
  if (max_windows > 0 && max_windows < n) n = max_windows;
  EvalResult r;
  r.name = k_setting_name(k);
  r.k.assign(k.begin(), k.end());

  std::vector<int> in(size_t(B) * T), tgt(size_t(B) * T);
  Tape tape(arena);
  tape.set_grad_enabled(false);
  double sum = 0;  // summed token losses
  const auto t0 = std::chrono::steady_clock::now();
  auto last = t0;
  bool printed = false;
  const bool tty = isatty(fileno(stderr));
  for (int64_t w0 = 0; w0 < n; w0 += B) {
    const int b = int(std::min<int64_t>(B, n - w0));
    for (int i = 0; i < b; ++i) val.eval_window(w0 + i, &in[size_t(i) * T], &tgt[size_t(i) * T]);
    arena.reset();
    tape.clear();
    ForwardStats st;
    st.capture_router = bool(on_batch);
    lm.forward(tape, in.data(), tgt.data(), b, T, k, &st, 0);  // st.ce: mean over b*T tokens
    sum += st.ce * double(b) * T;
    if (on_batch) on_batch(st);
    auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last).count() > 2.0 && w0 + b < n) {
      last = now;
      printed = true;
      std::fprintf(stderr, tty ? "\r  %s %s: %lld/%lld windows" : "  %s %s: %lld/%lld windows\n",
                   label.c_str(), r.name.c_str(), (long long)(w0 + b), (long long)n);
      std::fflush(stderr);
    }
  }
  if (printed && tty) std::fprintf(stderr, "\r%*s\r", 60, "");
  arena.reset();
  tape.clear();
  r.windows = n;
  r.tokens = n * T;
  r.loss = sum / double(r.tokens);
  return r;
}

std::vector<std::string> result_table(const std::vector<EvalResult>& rs, bool byte_tokens) {
  std::vector<std::string> lines;
  size_t w = 1;
  for (const auto& r : rs) w = std::max(w, r.name.size());
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-*s | val loss (nats) | %s", int(w), "K",
                byte_tokens ? "bits/byte" : "bits/token");
  lines.push_back(buf);
  lines.push_back(std::string(w, '-') + "-+-----------------+----------");
  for (const auto& r : rs) {
    std::snprintf(buf, sizeof buf, "%-*s | %15.4f | %9.4f", int(w), r.name.c_str(), r.loss, r.bits());
    lines.push_back(buf);
  }
  return lines;
}

std::string results_json(const std::vector<EvalResult>& rs) {
  std::string s = "{\"results\": [";
  for (size_t i = 0; i < rs.size(); ++i) {
    const auto& r = rs[i];
    s += i ? ",\n  " : "\n  ";
    s += "{\"name\": " + json_string(r.name) + ", \"k\": [";
    for (size_t j = 0; j < r.k.size(); ++j) s += (j ? ", " : "") + std::to_string(r.k[j]);
    s += "], \"val_loss\": " + json_number(r.loss) + ", \"bits_per_byte\": " + json_number(r.bits()) +
         ", \"windows\": " + std::to_string(r.windows) + ", \"tokens\": " + std::to_string(r.tokens) + "}";
  }
  return s + "\n]}\n";
}

void write_text_file(const std::string& path, const std::string& text) { write_file_atomic(path, text); }

int eval_command(int argc, char** argv) {
  std::string run_dir, data_dir, k_list, layer_k, json_path, checkpoint, weights;
  bool sweep = false, help = false, analyze = false, frontier = false;
  std::string frontier_budgets = "1.5,2.5,3.5";
  int gen_tokens = 64;
  double budget = 0;
  std::string csv_path, plot_path;
  int64_t eval_windows = 64;
  int batch = 0, threads = 0;
  po::options_description desc(
      "anyk eval (--run-dir DIR | --checkpoint DIR|latest | --weights FILE.h5) --data DIR\n"
      "          (--k 1,2,4 | --layer-k 4,3,2,1 | --sweep) [options]\n"
      "Validation loss and bits per byte of a trained model at the given K settings. The model config\n"
      "comes from the run's config.ini, or from the checkpoint's / weights file's attributes");
  desc.add_options()("help,h", po::bool_switch(&help), "show this help")(
      "run-dir", po::value(&run_dir), "run directory holding config.ini and model.h5")(
      "checkpoint", po::value(&checkpoint),
      "evaluate a checkpoint: its step directory, a `latest` file, or `latest` (with --run-dir)")(
      "weights", po::value(&weights), "evaluate a weights file: a model.h5 or a consolidated checkpoint")(
      "data", po::value(&data_dir), "data directory holding val.bin")(
      "k", po::value(&k_list), "comma-separated K values, each used by every layer (e.g. 1,2,4)")(
      "layer-k", po::value(&layer_k), "one K per layer, comma-separated (length = layers)")(
      "sweep", po::bool_switch(&sweep), "every uniform K = 1..experts")(
      "budget", po::value(&budget),
      "average K per layer: greedy per-layer allocation (start at K=1, give one more expert to the "
      "layer that gains most) reported next to the most even schedule of the same cost")(
      "analyze", po::bool_switch(&analyze),
      "router analysis at --k (one value; default: the run's largest K): expert load per layer, "
      "router sharpness (top-1 probability, top-K mass, entropy), co-activated pairs, Spearman "
      "stability of the ranking across K")(
      "frontier", po::bool_switch(&frontier),
      "cost/quality frontier: bits per byte beside measured KV-cache decode tokens/s and FLOPs per "
      "token, for K = 1..experts and the greedy schedules of --frontier-budgets (--json, --plot)")(
      "frontier-budgets", po::value(&frontier_budgets)->default_value("1.5,2.5,3.5"),
      "average-K budgets of the frontier's greedy per-layer schedules")(
      "gen-tokens", po::value(&gen_tokens)->default_value(64), "tokens generated per frontier speed run")(
      "json", po::value(&json_path), "also write the results to this JSON file")(
      "csv", po::value(&csv_path), "also write the results as CSV (name,k,val_loss,bits_per_byte)")(
      "plot", po::value(&plot_path), "with --sweep: a PNG plot of bits per byte against K "
                                     "(tools/plot_sweep.py, needs python3-matplotlib)")(
      "eval-windows", po::value(&eval_windows)->default_value(64), "validation windows (0 = all)")(
      "batch", po::value(&batch)->default_value(0), "windows per forward (0 = the run's --batch)")(
      "threads", po::value(&threads)->default_value(0), "OpenMP threads (0 = all available)");
  po::variables_map vm;
  try {
    po::store(parse_command_line(argc, argv, desc, "eval"), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    ANYK_FAIL(e.what() << " hint: see anyk eval --help");
  }
  if (help) {
    std::cout << desc << "\n";
    return 0;
  }
  ANYK_CHECK(checkpoint.empty() || weights.empty(), "give at most one of --checkpoint, --weights");
  ANYK_CHECK(!run_dir.empty() || !checkpoint.empty() || !weights.empty(),
             "--run-dir, --checkpoint or --weights is required hint: see anyk eval --help");
  ANYK_CHECK(!data_dir.empty(), "--data is required hint: see anyk eval --help");
  int modes = int(!k_list.empty() && !analyze) + int(!layer_k.empty()) + int(sweep) + int(budget != 0) +
              int(analyze) + int(frontier);
  ANYK_CHECK(modes == 1, "give exactly one of --k, --layer-k, --sweep, --budget, --analyze, --frontier hint: see anyk eval --help");
  ANYK_CHECK(plot_path.empty() || sweep || frontier, "--plot needs --sweep or --frontier");
  ANYK_CHECK(eval_windows >= 0, "--eval-windows " << eval_windows << " must be >= 0 (0 = all)");
  ANYK_CHECK(batch >= 0, "--batch " << batch << " must be >= 0");
  ANYK_CHECK(threads >= 0, "--threads " << threads << " must be >= 0");

  // The model config: from the run's config.ini (run-dir mode), else from the file's attributes;
  // the other options (the default --batch) from the saved config text where there is one.
  TrainOptions o;
  ModelConfig mc;
  std::string ckpt_dir;
  CheckpointMeta meta;
  if (!checkpoint.empty()) {
    ckpt_dir = resolve_checkpoint(checkpoint, run_dir);
    meta = read_checkpoint_meta(ckpt_dir);
    read_train_config_text(meta.config_ini, ckpt_dir + "/meta.h5 attribute config_ini", o);
    mc = meta.model;
  } else if (!weights.empty()) {
    mc = weights_config(weights);
    h5::Handle f = h5::open_file(weights);
    if (h5::attr_exists(f.id, "config_ini"))
      read_train_config_text(h5::read_attr_string(f.id, weights, "config_ini"), weights + " attribute config_ini", o);
    else if (!run_dir.empty() && std::filesystem::is_regular_file(run_dir + "/config.ini"))
      read_train_config(run_dir + "/config.ini", o);
  } else {
    const std::string cfg_path = run_dir + "/config.ini";
    ANYK_CHECK(std::filesystem::is_regular_file(cfg_path),
               cfg_path << " not found hint: --run-dir must be a directory written by anyk train");
    read_train_config(cfg_path, o);
  }
  o.data = data_dir;
  o.run_dir = run_dir.empty() ? "." : run_dir;
  o.threads = threads;
  validate_train_options(o);
  if (checkpoint.empty() && weights.empty()) mc = model_config(o);
  mc.validate();
  const int L = mc.layers, E = mc.experts;

  std::vector<std::vector<int>> settings;
  if (budget != 0 || analyze || frontier) {
    // handled after the model is loaded
  } else if (sweep) {
    for (int k = 1; k <= E; ++k) settings.push_back(std::vector<int>(L, k));
  } else if (!k_list.empty()) {
    for (int k : parse_int_list(k_list, "k")) {
      ANYK_CHECK(k >= 1 && k <= E, "--k " << k << " is outside [1, experts=" << E << "]");
      settings.push_back(std::vector<int>(L, k));
    }
  } else {
    std::vector<int> ks = parse_int_list(layer_k, "layer-k");
    ANYK_CHECK(int(ks.size()) == L, "--layer-k has " << ks.size() << " values but the model has "
                                                     << L << " layers");
    for (int k : ks) ANYK_CHECK(k >= 1 && k <= E, "--layer-k value " << k << " is outside [1, experts=" << E << "]");
    settings.push_back(ks);
  }

  const std::string val_path = data_dir + "/val.bin";
  ANYK_CHECK(std::filesystem::is_directory(data_dir),
             "data directory " << data_dir << " does not exist hint: run anyk prepare first");
  auto val_tokens = std::make_shared<const std::vector<uint16_t>>(data::read_shard(val_path, mc.vocab));
  data::Loader val(val_tokens, mc.seq_len, uint64_t(o.seed));

  omp_set_num_threads(o.threads);
  LocalDispatcher disp(E);
  LM lm(mc, disp);
  std::string source;
  if (!ckpt_dir.empty()) {
    source = ckpt_dir;
    read_checkpoint_tensors(ckpt_dir, meta, dense_refs(lm.params(), nullptr, 0),
                            expert_refs(lm.params(), nullptr, 1, 0));
  } else {
    source = weights.empty() ? run_dir : weights;
    load_weights(weights.empty() ? run_dir + "/model.h5" : weights, lm);
  }

  Arena arena;
  const int eb = batch > 0 ? batch : o.batch;
  if (frontier) {
    FrontierOptions fo;
    fo.budgets = parse_double_list(frontier_budgets, "frontier-budgets");
    fo.gen_tokens = gen_tokens;
    fo.batch = eb;
    fo.windows = eval_windows;
    return frontier_command(lm, val, fo, arena, source, json_path, plot_path);
  }
  if (analyze) {
    int K = o.k_strategy == "fixed" || o.k_strategy == "emoe" ? o.k : o.k_max;
    if (!k_list.empty()) {
      auto ks = parse_int_list(k_list, "k");
      ANYK_CHECK(ks.size() == 1, "--analyze takes one --k value, got " << k_list);
      K = ks[0];
    }
    std::string js = analyze_router(lm, val, K, eb, eval_windows, arena);
    if (!json_path.empty()) write_text_file(json_path, js);
    return 0;
  }
  std::vector<EvalResult> rs;
  if (budget != 0) {
    BudgetResult br = greedy_budget(lm, val, budget, eb, eval_windows, arena);
    std::printf("greedy allocation for an average K of %g over %d layers:\n", budget, L);
    for (const auto& line : br.trace) std::printf("  %s\n", line.c_str());
    br.greedy.name = "greedy " + br.greedy.name;
    br.balanced.name = "even " + br.balanced.name;
    rs = {br.greedy, br.balanced};
  }
  for (const auto& k : settings) rs.push_back(evaluate(lm, val, k, eb, eval_windows, arena));
  std::printf("%s: %lld val windows of %d tokens\n", source.c_str(), (long long)rs[0].windows, mc.seq_len);
  for (const auto& line : result_table(rs, mc.vocab == 256)) std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  if (!json_path.empty()) write_text_file(json_path, results_json(rs));
  if (!csv_path.empty()) {
    std::string csv = "name,k,val_loss,bits_per_byte\n";
    for (const auto& r : rs) {
      std::string ks;
      for (size_t i = 0; i < r.k.size(); ++i) ks += (i ? ";" : "") + std::to_string(r.k[i]);
      csv += "\"" + r.name + "\"," + ks + "," + json_number(r.loss) + "," + json_number(r.bits()) + "\n";
    }
    write_text_file(csv_path, csv);
  }
  if (!plot_path.empty()) {
    const std::string tmp = plot_path + ".json";
    write_text_file(tmp, results_json(rs));
    const std::string cmd = "/usr/bin/python3 '" + std::string(ANYK_SOURCE_DIR) + "/tools/plot_sweep.py' --out '" +
                            plot_path + "' --label '" + source + "' '" + tmp + "'";
    int rc = std::system(cmd.c_str());
    std::filesystem::remove(tmp);
    ANYK_CHECK(rc == 0, "plotting failed (" << cmd << ") hint: apt-get install python3-matplotlib");
  }
  return 0;
}

}  // namespace anyk::launch
