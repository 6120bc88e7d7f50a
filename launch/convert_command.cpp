// `anyk convert` (see convert_command.h): options, the checks on --out before anything is read,
// and the summary line; the conversion itself is io::convert_checkpoint.
#include "launch/convert_command.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "io/checkpoint.h"
#include "io/convert.h"
#include "io/weights.h"
#include "launch/options.h"
#include "launch/threads.h"
#include "launch/tokenizer.h"
#include "core/check.h"

namespace anyk::launch {

namespace fs = std::filesystem;

namespace {

// --out against --to, before anything is read: a file for consolidated/safetensors, a directory
// for ep=M, not existing unless --overwrite, in an existing directory. For ep=M, trailing '/'s
// are dropped (NEWDIR/ is NEWDIR: the conversion writes NEWDIR.tmp beside it and renames it) and
// an existing empty directory counts as not existing (it is replaced). Returns the path to write.
std::string check_out(std::string out, const std::string& to, int ep, bool overwrite) {
  const bool file_out = ep == 0 && to != "hf";
  if (!file_out)
    while (out.size() > 1 && out.back() == '/') out.pop_back();
  const fs::path o(out);
  std::error_code ec;
  const bool empty_dir = !file_out && fs::is_directory(o) && fs::is_empty(o, ec) && !ec;
  ANYK_CHECK(!(file_out && fs::is_directory(o)),
             "--out " << out << " is a directory, but --to " << to << " writes one file hint: name a file, e.g. "
                      << (o / (to == "safetensors" ? "model.safetensors"
                               : to == "gguf"      ? "model.gguf"
                                                   : "model.h5"))
                             .string());
  ANYK_CHECK(!(!file_out && fs::exists(o) && !fs::is_directory(o)),
             "--out " << out << " is a file, but --to " << to << " writes a directory hint: name a "
                                                                  "directory that does not exist yet");
  ANYK_CHECK(!fs::exists(o) || empty_dir || overwrite,
             "--out " << out << " exists" << (file_out ? "" : " and is not empty")
                      << " hint: choose another path, or pass --overwrite to replace it");
  const fs::path parent = o.parent_path().empty() ? fs::path(".") : o.parent_path();
  ANYK_CHECK(fs::is_directory(parent), "--out " << out << ": directory " << parent.string()
                                                << " does not exist hint: create it first");
  return out;
}

// The K a GGUF export uses without --k: the largest K the model trained with (fixed/emoe: its
// --k, else --k-max), as `anyk generate` defaults (a model.h5 without them: its run directory's
// config.ini); E when the source carries no training options. *tokenizer: the path of the
// source's SentencePiece tokenizer.model (launch/tokenizer.h; empty for bytes).
int trained_k(const std::string& checkpoint, std::string* tokenizer) {
  TrainOptions o;
  int experts = 0;
  bool known = false;
  fs::path weights;  // a weights or consolidated file (a run directory: its model.h5)
  if (fs::is_directory(checkpoint) && fs::is_regular_file(fs::path(checkpoint) / "model.h5") &&
      !fs::exists(fs::path(checkpoint) / "meta.h5"))
    weights = fs::path(checkpoint) / "model.h5";
  else if (fs::is_regular_file(checkpoint) && fs::path(checkpoint).filename() != "latest")
    weights = checkpoint;
  if (!weights.empty()) {
    experts = io::weights_config(weights.string()).experts;
    known = read_weights_config_ini(weights.string(), o);
    const fs::path ini = weights.parent_path() / "config.ini";  // model.h5 in its run directory
    if (!known && weights.filename() == "model.h5" && fs::is_regular_file(ini)) {
      read_train_config(ini.string(), o);
      known = true;
    }
    merge_weights_tokenizer(o, weights.string());
  } else {
    const io::CheckpointMeta meta = io::read_checkpoint_meta(io::resolve_checkpoint(checkpoint, ""));
    experts = meta.model.experts;
    read_train_config_text(meta.config_ini, checkpoint + " config_ini", o);
    known = true;
  }
  const fs::path ckpt = fs::is_regular_file(checkpoint) ? fs::path(checkpoint).parent_path() : fs::path(checkpoint);
  const std::vector<std::string> dirs = {weights.empty() ? "" : weights.parent_path().string(),
                                         (ckpt / ".." / "..").lexically_normal().string(), ckpt.string()};
  auto sp = load_model_tokenizer(o, dirs, "the model " + checkpoint);
  *tokenizer = sp ? sp->path() : "";
  const int k = o.k_strategy == "fixed" || o.k_strategy == "emoe" ? o.k : o.k_max;
  return known ? std::max(1, std::min(k, experts)) : experts;
}

}  // namespace

int convert_command(int argc, char** argv) {
  std::string checkpoint, to, out, dtype = "f32";
  bool no_optimizer = false, overwrite = false;
  int k = 0, threads = 0;
  po::options_description desc(
      "anyk convert --checkpoint RUN_DIR|DIR|RUN_DIR/checkpoints/latest|FILE.h5 "
      "--to consolidated|ep=M|safetensors|gguf|hf --out PATH [--no-optimizer] [--k K] [--dtype f32|f16]\n"
      "Convert a checkpoint offline (one process): one consolidated HDF5 file (the model.h5 layout plus\n"
      "adam_m/ and adam_v/), a sharded checkpoint directory for another expert-parallel size, or\n"
      "safetensors (weights only), or GGUF for llama.cpp (a llama-architecture MoE with the byte\n"
      "vocabulary; --k sets expert_used_count, which llama.cpp's --override-kv\n"
      "llama.expert_used_count=int:K changes at load), or a Hugging Face Mixtral directory (config.json\n"
      "and model.safetensors; --k sets num_experts_per_tok). Formats: docs/checkpoint-format.md,\n"
      "docs/elsewhere.md");
  CommandOptions cmd("convert", desc);
  desc.add_options()("checkpoint", po::value(&checkpoint),
                     "a checkpoint step directory, a `latest` file, a consolidated .h5 file, a model.h5, or a run "
                     "directory (its model.h5)")(
      "to", po::value(&to), "consolidated, ep=M (M divides the experts), safetensors, gguf or hf")(
      "k", po::value(&k), "gguf, hf: experts per token, expert_used_count / num_experts_per_tok (default: "
                          "the trained K)")(
      "dtype", po::value(&dtype), "gguf: f32 (default) or f16 for the matrices (norms and router stay f32)")(
      "out", po::value(&out), "output file (consolidated, safetensors, gguf) or directory (ep=M, hf)")(
      "no-optimizer", po::bool_switch(&no_optimizer), "leave the AdamW moments out (weights only)")(
      "overwrite", po::bool_switch(&overwrite),
      "replace an existing --out (the old one is removed only after the new one is complete)")(
      "threads", po::value(&threads)->default_value(0), kThreadsHelp);
  if (!cmd.parse(argc, argv)) return 0;
  ANYK_CHECK(threads >= 0, "--threads " << threads << " must be >= 0 (0 = the rule of --help)");
  use_threads(threads);
  cmd.require(!checkpoint.empty(), "checkpoint");
  cmd.require(!out.empty(), "out");
  int ep = 0;
  as_usage_error([&] {  // the option values alone: a failure is a usage error
    if (to.rfind("ep=", 0) == 0) {
      ep = parse_int_list(to.substr(3), "to ep=").at(0);
      ANYK_CHECK(ep >= 1 && to.find(',') == std::string::npos, "--to " << to << ": M in ep=M must be one integer >= 1");
    } else {
      ANYK_CHECK(to == "consolidated" || to == "safetensors" || to == "gguf" || to == "hf",
                 "--to '" << to << "' is not one of consolidated, ep=M, safetensors, gguf, hf " << cmd.hint());
    }
    ANYK_CHECK(to == "gguf" || to == "hf" || cmd.vm().count("k") == 0, "--k applies to --to gguf and hf only");
    ANYK_CHECK(to == "gguf" || cmd.vm().count("dtype") == 0, "--dtype applies to --to gguf only");
    ANYK_CHECK(dtype == "f32" || dtype == "f16", "--dtype '" << dtype << "' is not one of f32, f16");
  });
  out = check_out(out, to, ep, overwrite);
  const auto t0 = std::chrono::steady_clock::now();
  io::GGUFExport gguf;
  if (to == "gguf" || to == "hf") {
    const int source_k = trained_k(checkpoint, &gguf.tokenizer);
    gguf.k = cmd.vm().count("k") ? k : source_k;
    gguf.f16 = dtype == "f16";
    gguf.name = "anyk";
  }
  const io::ConvertSummary s = io::convert_checkpoint(checkpoint, ep > 0 ? "ep" : to, ep, out, no_optimizer, gguf);
  const std::string step = s.step >= 0 ? std::to_string(s.step) : "unknown";  // a model.h5 of an older anyk
  std::printf("convert: %s (step %s, %lld experts, saved with ep %lld) -> %s %s%s (%.2f s)\n", s.source.c_str(),
              step.c_str(), (long long)s.experts, (long long)s.ep_size, to.c_str(), out.c_str(),
              to == "gguf"       ? (", K = " + std::to_string(gguf.k) + (gguf.f16 ? ", f16" : ", f32") +
                              (gguf.tokenizer.empty() ? ", byte vocabulary" : ", SentencePiece " + gguf.tokenizer))
                                 .c_str()
              : to == "hf"       ? (", K = " + std::to_string(gguf.k)).c_str()
              : s.moments || to == "safetensors" ? ""
                                                 : " without optimizer state",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  announce_threads("convert", stdout);
  return 0;
}

}  // namespace anyk::launch
