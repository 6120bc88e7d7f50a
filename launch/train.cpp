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
#include "data/shard.h"
#include "launch/evaluate.h"
#include "launch/options.h"
#include "launch/report.h"
#include "launch/weights.h"
#include "model/k_schedule.h"
#include "model/lm.h"
#include "optim/adamw.h"
#include "parallel/dispatcher.h"
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
};

std::string usage_line() {
  return "anyk train --data DIR --run-dir DIR [--config FILE] [options]\n"
         "Train an elastic-K MoE language model. Flags override values from --config (INI with\n"
         "the same long names, e.g. `dim = 128`). Writes train.log, metrics.jsonl, config.ini,\n"
         "model.h5 and sweep.json into the run dir and ends with a K-sweep table";
}

// Parses and validates everything; touches no file. Returns false when --help was shown.
bool parse_and_validate(int argc, char** argv, Prepared& p) {
  TrainOptions& o = p.o;
  bool help = false;
  OptionTable table(usage_line());
  bind_train_options(table, o);
  table.desc().add_options()("config", po::value<std::string>(&o.config),
                             "INI file of these options (flags given here win)")(
      "help,h", po::bool_switch(&help), "show this help");
  po::variables_map vm;
  try {
    po::store(parse_command_line(argc, argv, table.desc(), "train"), vm);
  } catch (const po::error& e) {
    ANYK_FAIL(e.what() << " hint: see anyk train --help");
  }
  if (vm.count("help") && vm["help"].as<bool>()) {
    std::cout << table.desc() << "\n";
    return false;
  }
  if (vm.count("config")) {
    const std::string path = vm["config"].as<std::string>();
    std::ifstream in(path);
    ANYK_CHECK(in, "cannot read --config " << path << " hint: check the path");
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
  ANYK_CHECK(int64_t(p.train_tokens->size()) >= o.seq_len + 1,
             o.data << "/train.bin has " << p.train_tokens->size() << " tokens, fewer than one window of --seq-len "
                    << o.seq_len << " + 1");
  ANYK_CHECK(int64_t(p.val_tokens->size()) >= o.seq_len + 1,
             o.data << "/val.bin has " << p.val_tokens->size() << " tokens, fewer than one window of --seq-len "
                    << o.seq_len << " + 1 hint: raise --val-fraction in anyk prepare or lower --seq-len");
  ANYK_CHECK(!fs::exists(o.run_dir) || fs::is_directory(o.run_dir),
             "--run-dir " << o.run_dir << " exists and is not a directory");
  p.config_ini = "# anyk train: fully resolved options (usable with --config)\n" + table.to_ini();
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
    std::memcpy(to.params().region_data(r), from.params().region_data(r),
                size_t(from.params().region_numel(r)) * sizeof(float));
  }
}

std::vector<ParamSpan> spans_of(const ParamStore& ps, Region r) {
  std::vector<ParamSpan> s;
  for (const ParamInfo& i : ps.infos())
    if (i.region == r) s.push_back(ParamSpan{i.offset, i.shape.numel(), i.decay});
  return s;
}

}  // namespace

int train_command(int argc, char** argv) {
  Prepared p;
  if (!parse_and_validate(argc, argv, p)) return 0;
  const TrainOptions& o = p.o;

  // Everything is valid: from here on files are written.
  fs::create_directories(o.run_dir);
  write_text_file(o.run_dir + "/config.ini", p.config_ini);
  LineSink out;
  out.open_log(o.run_dir + "/train.log");
  std::FILE* metrics = std::fopen((o.run_dir + "/metrics.jsonl").c_str(), "w");
  ANYK_CHECK(metrics, "cannot write " << o.run_dir << "/metrics.jsonl");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> metrics_guard(metrics, std::fclose);

  omp_set_num_threads(o.threads);
  const int B = o.batch, T = o.seq_len, A = o.grad_accum, L = o.layers, E = o.experts;
  const KSchedule ks(p.kcfg, L, E);
  const bool top_p = ks.per_token();
  ModelConfig train_cfg = p.model;
  if (top_p) {
    train_cfg.router.top_p = o.top_p;
    train_cfg.router.k_min = o.k_min;
  }
  LocalDispatcher disp(E);
  LM lm(train_cfg, disp);
  lm.init(uint64_t(o.seed));
  // Evaluation always forces K; under top_p training the router differs, so eval uses a twin.
  std::unique_ptr<LM> eval_twin;
  if (top_p) eval_twin = std::make_unique<LM>(p.model, disp);
  auto eval_model = [&]() -> const LM& {
    if (!eval_twin) return lm;
    copy_params(lm, *eval_twin);
    return *eval_twin;
  };

  ParamStore& ps = lm.params();
  AdamW opt(AdamWConfig{o.lr, 0.9, 0.95, 1e-8, o.weight_decay});
  std::vector<std::pair<float*, int64_t>> grads;
  for (Region r : {Region::Dense, Region::Expert}) {
    int64_t n = ps.region_numel(r);
    if (n == 0) continue;
    opt.add_region(static_cast<float*>(ps.region_data(r)), static_cast<const float*>(ps.region_grad(r)), n,
                   spans_of(ps, r));
    grads.emplace_back(static_cast<float*>(ps.region_grad(r)), n);
  }
  ps.zero_grad();

  data::Loader loader(p.train_tokens, T, uint64_t(o.seed));
  data::Loader val(p.val_tokens, T, uint64_t(o.seed));

  const double core_flops = measure_sgemm_flops_single_core();
  const double peak = core_flops * o.threads;
  const int k_lo = p.kcfg.strategy == KStrategy::Fixed ? o.k : o.k_min;
  const int k_hi = p.kcfg.strategy == KStrategy::Fixed ? o.k : o.k_max;
  out.line("anyk train: " + lm.config().summary() +
           fmt(" | active params/token: %lld at K=%d, %lld at K=%d", (long long)lm.config().active_params(k_lo),
               k_lo, (long long)lm.config().active_params(k_hi), k_hi));
  out.line(fmt("data: %zu train / %zu val tokens from %s; B=%d T=%d A=%d (%d tokens/step), %lld steps",
               p.train_tokens->size(), p.val_tokens->size(), o.data.c_str(), B, T, A, B * T * A,
               (long long)o.steps));
  out.line(fmt("K strategy %s: %s; seed %lld", o.k_strategy.c_str(),
               p.kcfg.strategy == KStrategy::Fixed  ? fmt("K=%d", o.k).c_str()
               : p.kcfg.strategy == KStrategy::TopP ? fmt("p=%g, per-token K in [%d,%d]", o.top_p, o.k_min, o.k_max).c_str()
                                                    : fmt("K in [%d,%d]", o.k_min, o.k_max).c_str(),
               (long long)o.seed));
  out.line(fmt("peak: %d threads x %.1f GFLOP/s (single-core 512^3 SGEMM) = %.1f GFLOP/s", o.threads,
               core_flops * 1e-9, peak * 1e-9));

  Arena arena;
  Tape tape(arena);
  std::vector<int> in(size_t(B) * T), tgt(size_t(B) * T);
  const double loss_norm = double(B) * T * A;
  const double attn_flops_per_token = 12.0 * L * T * o.dim;

  // Accumulators over the steps since the last log line.
  double interval_secs = 0, interval_flops = 0;
  int64_t interval_tokens = 0;

  auto run_eval = [&](int64_t step_done) {
    std::vector<int> eval_ks =
        p.kcfg.strategy == KStrategy::Fixed ? std::vector<int>{o.k} : std::vector<int>{o.k_min, o.k_max};
    if (eval_ks.size() == 2 && eval_ks[0] == eval_ks[1]) eval_ks.pop_back();
    const LM& em = eval_model();
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
    std::fflush(metrics);
    line.pop_back();
    out.line(line);
  };

  for (int64_t s = 0; s < o.steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    double ce = 0, mean_k = 0, imbalance = 0;
    int imb_n = 0;
    std::vector<double> k_first;  // realised K per layer of micro-batch 0
    for (int a = 0; a < A; ++a) {
      std::vector<int> k = ks.draw(s, a);
      loader.next(B, 0, 1, in.data(), tgt.data());
      arena.reset();
      tape.clear();
      ForwardStats st;
      Var loss = lm.forward(tape, in.data(), tgt.data(), B, T, k, &st, loss_norm);
      tape.backward(loss);
      ce += st.ce;  // each micro-batch's summed CE / (B*T*A): the sum is the step's mean
      double mk = 0;
      for (int l = 0; l < L; ++l) {
        const MoEStats& ls = st.layers[l];
        const double per_tok = double(ls.assignments) / (double(B) * T);
        mk += per_tok;
        if (a == 0) k_first.push_back(top_p ? per_tok : double(k[l]));
        if (ls.assignments > 0 && !ls.counts.empty()) {
          int mx = 0;
          for (int c : ls.counts) mx = std::max(mx, c);
          imbalance += mx / (double(ls.assignments) / ls.counts.size());
          ++imb_n;
        }
      }
      mean_k += mk / L;
    }
    arena.reset();
    tape.clear();
    mean_k /= A;
    imbalance = imb_n ? imbalance / imb_n : 0;
    const double gnorm = clip_grad_norm(grads, o.grad_clip);
    ANYK_CHECK(std::isfinite(gnorm) && std::isfinite(ce),
               "training diverged at step " << s + 1 << " (loss " << ce << ", grad norm " << gnorm
                                            << ") hint: lower --lr or raise --warmup");
    const double lr = p.lr.at(s);
    opt.step(lr);
    ps.zero_grad();
    const auto t1 = std::chrono::steady_clock::now();

    const int64_t tokens = int64_t(B) * T * A;
    interval_secs += std::chrono::duration<double>(t1 - t0).count();
    interval_tokens += tokens;
    interval_flops += double(tokens) * (6.0 * double(lm.config().active_params(mean_k)) + attn_flops_per_token);

    const int64_t done = s + 1;
    if (done == 1 || done % o.log_every == 0 || done == o.steps) {
      const double tps = interval_tokens / interval_secs;
      const double mfu = interval_flops / interval_secs / peak;
      const double arena_mb = double(arena.high_water()) / (1 << 20);
      out.line(fmt("step %*lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | MFU %.1f%% | K %.2f | "
                   "imb %.2f | arena %.1f MB",
                   int(std::to_string(o.steps).size()), (long long)done, (long long)o.steps, ce, lr, gnorm, tps,
                   100 * mfu, mean_k, imbalance, arena_mb));
      std::string kl = "[";
      for (size_t l = 0; l < k_first.size(); ++l)
        kl += (l ? ", " : "") + (top_p ? json_number(k_first[l]) : std::to_string(int(k_first[l])));
      kl += "]";
      std::fprintf(metrics,
                   "{\"type\": \"train\", \"step\": %lld, \"loss\": %s, \"lr\": %s, \"grad_norm\": %s, "
                   "\"tok_per_s\": %s, \"mfu\": %s, \"mean_k\": %s, \"imbalance\": %s, \"k_per_layer\": %s, "
                   "\"arena_mb\": %s}\n",
                   (long long)done, json_number(ce).c_str(), json_number(lr).c_str(), json_number(gnorm).c_str(),
                   json_number(tps).c_str(), json_number(mfu).c_str(), json_number(mean_k).c_str(),
                   json_number(imbalance).c_str(), kl.c_str(), json_number(arena_mb).c_str());
      std::fflush(metrics);
      interval_secs = interval_flops = 0;
      interval_tokens = 0;
    }
    if (o.eval_every > 0 && done % o.eval_every == 0 && done != o.steps) run_eval(done);
  }

  save_weights(o.run_dir + "/model.h5", lm);
  out.line("saved " + o.run_dir + "/model.h5");

  // K-sweep: every uniform K on the same val windows.
  const LM& em = eval_model();
  std::vector<EvalResult> rs;
  for (int k = 1; k <= E; ++k) {
    std::vector<int> kk(L, k);
    rs.push_back(evaluate(em, val, kk, B, o.eval_windows, arena, "sweep"));
  }
  out.line(fmt("K-sweep on %lld val windows of %d tokens:", (long long)rs[0].windows, T));
  for (const auto& line : result_table(rs, lm.config().vocab == 256)) out.line(line);
  write_text_file(o.run_dir + "/sweep.json", results_json(rs));
  for (const auto& r : rs)
    std::fprintf(metrics, "{\"type\": \"sweep\", \"k\": %d, \"val_loss\": %s, \"bits_per_byte\": %s}\n", r.k[0],
                 json_number(r.loss).c_str(), json_number(r.bits()).c_str());
  return 0;
}

}  // namespace anyk::launch
