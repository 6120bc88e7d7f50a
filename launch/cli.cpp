// The command dispatcher: top-level help, `anyk prepare`, and the one place where errors become
// a single stderr line and the exit status (docs/cli.md: 1 run-time failure, 2 usage error;
// train, eval and convert live in train.cpp, eval_command.cpp and convert_command.cpp).
#include "launch/cli.h"

#include "parallel/comm.h"

#include <boost/program_options.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <iostream>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/token_shards.h"
#include "launch/convert_command.h"
#include "io/h5.h"
#include "launch/eval_command.h"
#include "launch/generate.h"
#include "launch/tokenizer.h"
#include "launch/options.h"
#include "launch/serve.h"
#include "launch/train.h"
#include "launch/version.h"
#include "core/check.h"

namespace anyk {

namespace {

namespace po = boost::program_options;

constexpr const char* kUsageHead =
    "anyk: train once, serve any K - elastic Mixture-of-Experts language models\n"
    "\n"
    "usage: anyk <command> [options]      (anyk <command> --help for every option)\n"
    "       anyk --version                 version, git commit, compiler, CPU baseline, CUDA\n"
    "       --debug (anywhere; or ANYK_DEBUG=1): an error also names the source line that raised it\n"
    "exit status: 0 done, 1 run-time failure, 2 usage error (bad option or value); docs/cli.md\n"
    "\n"
    "commands:\n"
    "  prepare  --input PATH... --out DIR [--val-fraction 0.05] [--tokenizer bytes|sp|FILE.model]\n"
    "           [--vocab-size N] [--shard-tokens N]\n"
    "           tokenise text files/folders into DIR/train.bin and DIR/val.bin (bytes by default)\n"
    "           --shard-tokens N: as shards of N tokens, DIR/train_000000.bin ... and DIR/val_000000.bin ...\n"
    "  train    --data DIR --run-dir DIR [--config FILE] [--resume DIR|latest | --overwrite] [options]\n"
    "           train an MoE LM; --k-strategy is one of fixed, global, micro, layer, layer_weighted,\n"
    "           top_p (--expert-top-p P), emoe (--k, --k-ideal); --device cpu|cuda|checked; ends with a\n"
    "           K-sweep table of val loss and bits/byte; checkpoints go to RUN_DIR/checkpoints/step_<n>\n"
    "           (every --save-every N steps and at the end)\n";

constexpr const char* kUsageTail =
    "  eval     (--run-dir DIR | --checkpoint DIR|latest | --weights FILE.h5) --data DIR\n"
    "           (--k 1,2,4 | --layer-k 4,3,2,1 | --sweep | --budget B | --analyze | --frontier)\n"
    "           [--json F] [--csv F] [--plot F.png] [--frontier-budgets 1.5,2.5] [--gen-tokens N]\n"
    "           [--eval-windows N] [--batch B] [--threads N] [--device D] [--precision P]\n"
    "           validation loss and bits per byte of a trained model at each K setting\n"
    "  generate (--run-dir DIR | --checkpoint DIR|latest | --weights FILE.h5)\n"
    "           [--prompt TEXT | --prompt-file F | --prompts F] [--max-new N]\n"
    "           [--k K | --layer-k 4,3,2,1 | --budget B --data DIR | --expert-top-p P]\n"
    "           [--temperature T --top-k N --seed S --threads N --device D --precision P]\n"
    "           [--eval-windows N --batch B --logits-out F --decode-weights f32|bf16]\n"
    "           text at any K with a KV cache, streamed; ends with tokens/s and mean K (stderr);\n"
    "           --expert-top-p picks the experts per token, --top-k and --temperature sample tokens\n"
    "  serve    (--run-dir DIR | --checkpoint DIR|latest | --weights FILE.h5) [--host 127.0.0.1]\n"
    "           [--port 8080] [--slots 8] [--target-ms-per-token T --k-min 1 --k-max E]\n"
    "           OpenAI-compatible completions over HTTP; each request picks its K (k, layer_k,\n"
    "           expert_top_p, k \"auto\"), all K batched together; see docs/serve.md\n"
    "  convert  --checkpoint DIR|RUN_DIR/checkpoints/latest|FILE.h5\n"
    "           --to consolidated|ep=M|safetensors|gguf|hf --out PATH [--no-optimizer] [--overwrite] [--threads N]\n"
    "           [--k K --dtype f32|f16]\n"
    "           offline: one HDF5 file, a checkpoint for another --ep, safetensors, GGUF (llama.cpp)\n"
    "           or a Hugging Face Mixtral directory\n"
    "  --threads N (train, eval, generate, convert): threads per process; without it\n"
    "           OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK, else this node's cores / its ranks\n"
    "           (printed in one line at start); fewer run while other processes hold the\n"
    "           cores (ANYK_ADAPTIVE_THREADS=0 keeps the count fixed)\n"
    "  tokenize --tokenizer FILE.model|bytes [--input FILE]\n"
    "           each line's ids (the tokenizer of anyk prepare, generate and eval)\n"
    "\n"
    "example:\n"
    "  anyk prepare --input /usr/share/games/fortunes --out data/fortunes\n"
    "  anyk train --data data/fortunes --run-dir runs/quick --k-strategy layer --k-min 1 --k-max 4\n"
    "  anyk eval --run-dir runs/quick --data data/fortunes --layer-k 4,3,2,1\n"
    "  anyk generate --run-dir runs/quick --prompt 'The ' --max-new 200 --k 1\n"
    "  anyk convert --checkpoint runs/quick/checkpoints/latest --to safetensors --out quick.safetensors\n";

// The top-level help: train's options are listed from its option table, so none is left out.
std::string usage_text() {
  launch::TrainOptions o;
  launch::OptionTable table("train");
  launch::bind_train_options(table, o);
  std::string text = kUsageHead, line = "           options:";
  for (const auto& opt : table.desc().options()) {
    const std::string word = " --" + opt->long_name();
    if (line.size() + word.size() > 100) {
      text += line + "\n";
      line = "          ";  // the word brings its own leading space
    }
    line += word;
  }
  return text + line + "\n" + kUsageTail;
}

int prepare_command(int argc, char** argv) {
  std::vector<std::string> inputs;
  std::string out;
  double val_fraction = 0.05;
  std::string tokenizer = "bytes";
  int vocab_size = 0;
  po::options_description desc(
      "anyk prepare --input PATH... --out DIR [--val-fraction 0.05] [--tokenizer bytes|sp|FILE.model]\n"
      "Tokenise text files or folders (walked recursively, sorted; fortune *.dat index files\n"
      "and hidden entries skipped) into llm.c-format shards DIR/train.bin and DIR/val.bin");
  launch::CommandOptions cmd("prepare", desc);
  desc.add_options()("input", po::value(&inputs)->multitoken(), "text files or directories (one or more)")(
      "out", po::value(&out), "output directory")(
      "val-fraction", po::value(&val_fraction)->default_value(0.05, "0.05"),
      "fraction of the tokens (the last ones) held out for validation")(
      "tokenizer", po::value(&tokenizer)->default_value(tokenizer),
      "bytes (one token per byte), sp (train a SentencePiece BPE model of --vocab-size pieces on the "
      "training split) or a SentencePiece .model file; a model is kept as DIR/tokenizer.model")(
      "vocab-size", po::value(&vocab_size)->default_value(0), "pieces of the model --tokenizer sp trains");
  int64_t shard_tokens = 0;
  desc.add_options()("shard-tokens", po::value(&shard_tokens)->default_value(0),
                     "write each split as llm.c shards of N tokens (train_000000.bin, ..., val_000000.bin, ...; the "
                     "last one shorter) instead of one train.bin and val.bin; 0: one file per split. `anyk train "
                     "--data` reads either layout, mapped, never whole");
  if (!cmd.parse(argc, argv)) return 0;
  ANYK_USAGE_CHECK(shard_tokens >= 0, "--shard-tokens " << shard_tokens << " must be >= 0 hint: 0 writes one train.bin "
                                                     "and one val.bin");
  cmd.require(!inputs.empty(), "input");
  cmd.require(!out.empty(), "out");
  ANYK_USAGE_CHECK(val_fraction > 0 && val_fraction < 1,
             "--val-fraction " << val_fraction << " must be in (0, 1)");
  ANYK_USAGE_CHECK(tokenizer == "sp" || vocab_size == 0, "--vocab-size is for --tokenizer sp (given: --tokenizer "
                                                       << tokenizer << ")");
  cmd.require(tokenizer != "sp" || vocab_size != 0, "vocab-size");
  data::PrepareStats st = data::prepare(inputs, out, val_fraction, [](const std::string& line) {
    std::printf("prepare: %s\n", line.c_str());
    std::fflush(stdout);
  }, tokenizer, vocab_size);
  const int train_files = data::reshard_split(out, "train", shard_tokens);
  const int val_files = data::reshard_split(out, "val", shard_tokens);
  if (shard_tokens > 0)
    std::printf("prepare: %s/train.bin -> %d shards %s/train_000000.bin ..., %s/val.bin -> %d shards of up to %lld "
                "tokens\n", out.c_str(), train_files, out.c_str(), out.c_str(), val_files, (long long)shard_tokens);
  std::printf("prepare: %lld files, %lld bytes -> %s/train.bin (%lld tokens), %s/val.bin (%lld tokens)\n",
              (long long)st.files, (long long)st.bytes, out.c_str(), (long long)st.train_tokens,
              out.c_str(), (long long)st.val_tokens);
  return 0;
}

// "MESSAGE hint: FIX" (or "MESSAGE; hint: FIX") as "MESSAGE (hint: FIX)"; a message whose hint
// is already in parentheses, or that has none, is unchanged.
std::string parenthesize_hint(const std::string& msg) {
  const size_t h = msg.find("hint: ");
  if (h == std::string::npos || (h > 0 && msg[h - 1] == '(')) return msg;
  size_t b = h;
  while (b > 0 && (msg[b - 1] == ' ' || msg[b - 1] == ';' || msg[b - 1] == ',')) --b;
  size_t e = msg.size();
  while (e > h && (msg[e - 1] == ' ' || msg[e - 1] == '.')) --e;
  return msg.substr(0, b) + (b > 0 ? " (" : "(") + msg.substr(h, e - h) + ")";
}

// One line, whatever the message holds; with --debug, the source location after it.
void print_error(std::string msg, const std::string& where, bool debug) {
  msg = parenthesize_hint(msg);
  if (debug && !where.empty()) msg += " [" + where + "]";
  for (char& c : msg)
    if (c == '\n' || c == '\r') c = ' ';
  std::fflush(stdout);
  std::fprintf(stderr, "anyk: error: %s\n", msg.c_str());
}

struct Command {
  const char* name;
  int (*run)(int, char**);
};

// Every command: the dispatcher, the unknown-command hint and docs/cli.md name these.
const Command kCommands[] = {
    {"prepare", prepare_command},         {"train", launch::train_command},
    {"eval", launch::eval_command},       {"convert", launch::convert_command},
    {"generate", launch::generate_command}, {"tokenize", launch::tokenize_command},
    {"serve", launch::serve_command},
};

// --debug anywhere on the command line (removed from argv), or ANYK_DEBUG set to anything but
// "" and "0".
bool take_debug_flag(std::vector<char*>& args) {
  const char* env = std::getenv("ANYK_DEBUG");
  bool debug = env && *env && std::strcmp(env, "0") != 0;
  for (size_t i = 1; i < args.size();)
    if (std::strcmp(args[i], "--debug") == 0) {
      debug = true;
      args.erase(args.begin() + long(i));
    } else {
      ++i;
    }
  return debug;
}

int dispatch(const std::string& cmd, int argc, char** argv) {
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::fputs(usage_text().c_str(), stdout);
    return 0;
  }
  if (cmd == "--version" || cmd == "version") {
    std::fputs(launch::version_text().c_str(), stdout);
    return 0;
  }
  // Each command parses argv from its own name on (argv[0] is skipped by Program_options).
  std::string names;
  for (const Command& c : kCommands) {
    if (cmd == c.name) return c.run(argc - 1, argv + 1);
    names += std::string(names.empty() ? "" : ", ") + c.name;
  }
  ANYK_USAGE_FAIL("unknown command '" << cmd << "' hint: commands are " << names << "; see anyk --help");
}

}  // namespace

int run_cli(int argc, char** argv) {
  // HDF5's exit-time cleanup would close a file whose close already failed (a full disk) a second
  // time and crash; anyk closes every file itself.
  io::h5::disable_atexit();
  std::vector<char*> args(argv, argv + argc);
  const bool debug = take_debug_flag(args);
  args.push_back(nullptr);  // argv[argc] stays a null pointer
  argc = int(args.size()) - 1;
  argv = args.data();
  if (argc < 2) {
    std::fputs(usage_text().c_str(), stderr);
    return kExitUsage;
  }
  const std::string cmd = argv[1];
  int code = kExitFailure;
  try {
    return dispatch(cmd, argc, argv);
  } catch (const ReportedError& e) {
    return e.exit_code();  // another rank printed the error; every rank stops cleanly, no abort needed
  } catch (const AgreedError& e) {
    print_error(e.what(), e.where(), debug);  // every rank knows: stop cleanly, no abort
    return e.exit_code();
  } catch (const Error& e) {
    print_error(e.what(), e.where(), debug);
    code = e.exit_code();
  } catch (const std::bad_alloc&) {
    print_error("out of memory (std::bad_alloc) hint: lower --batch, --seq-len or the model size; the "
                "start-up line 'memory:' shows what a training run needs", "", debug);
  } catch (const po::error& e) {
    print_error(std::string(e.what()) + " hint: see anyk " + cmd + " --help", "", debug);
    code = kExitUsage;
  } catch (const std::exception& e) {
    print_error(e.what(), "", debug);
  }
  // Under MPI one failing rank must bring the whole job down now, not leave the others waiting
  // in a collective: the message is already printed, so abort every rank.
  abort_job_if_parallel(code);
  return code;
}

}  // namespace anyk
