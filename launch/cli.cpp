// The command dispatcher: top-level help, `anyk prepare`, and the one place where errors become
// a single stderr line and exit code 2 (train, eval and convert live in train.cpp, evaluate.cpp
// and convert.cpp).
#include "launch/cli.h"

#include "parallel/comm.h"

#include <boost/program_options.hpp>
#include <cstdio>
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
#include "launch/train.h"
#include "launch/version.h"
#include "core/check.h"

namespace anyk {

namespace {

namespace po = boost::program_options;

constexpr const char* kUsage =
    "anyk: train once, serve any K - elastic Mixture-of-Experts language models\n"
    "\n"
    "usage: anyk <command> [options]      (anyk <command> --help for every option)\n"
    "       anyk --version                 version, git commit, compiler, CPU baseline, CUDA\n"
    "\n"
    "commands:\n"
    "  prepare  --input PATH... --out DIR [--val-fraction 0.05] [--tokenizer bytes|sp|FILE.model]\n"
    "           byte-tokenise text files/folders into DIR/train.bin and DIR/val.bin\n"
    "           [--shard-tokens N]: as shards of N tokens, DIR/train_000000.bin ... and DIR/val_000000.bin ...\n"
    "  train    --data DIR --run-dir DIR [--config FILE] [--steps N --seed S --layers L --dim C\n"
    "           --heads NH --experts E --expert-hidden H --seq-len T --batch B --grad-accum A\n"
    "           --lr --min-lr --warmup --weight-decay --grad-clip --k-strategy NAME --k-min A\n"
    "           --k-max B --k K --tau --top-p --lb-coef --z-coef --router-kl-weight\n"
    "           --no-renormalize --log-every --eval-every --eval-windows --threads --vocab --ep\n"
    "           --save-every N --keep M --resume DIR|latest]\n"
    "           train an MoE LM; --k-strategy is one of fixed, global, micro, layer,\n"
    "           layer_weighted, top_p; ends with a K-sweep table of val loss and bits/byte;\n"
    "           checkpoints go to RUN_DIR/checkpoints/step_<n> (every N steps and at the end)\n"
    "  eval     (--run-dir DIR | --checkpoint DIR|latest | --weights FILE.h5) --data DIR\n"
    "           (--k 1,2,4 | --layer-k 4,3,2,1 | --sweep) [--json FILE] [--eval-windows N]\n"
    "           [--batch B] [--threads N]\n"
    "           validation loss and bits per byte of a trained model at each K setting\n"
    "  generate (--run-dir DIR | --checkpoint DIR|latest | --weights FILE.h5)\n"
    "           [--prompt TEXT | --prompt-file F | --prompts F] [--max-new N]\n"
    "           [--k K | --layer-k 4,3,2,1 | --budget B --data DIR | --top-p P]\n"
    "           [--temperature T --top-k N --seed S --threads N]\n"
    "           text at any K with a KV cache, streamed; ends with tokens/s and mean K\n"
    "  convert  --checkpoint DIR|RUN_DIR/checkpoints/latest|FILE.h5\n"
    "           --to consolidated|ep=M|safetensors --out PATH [--no-optimizer] [--threads N]\n"
    "           offline: one HDF5 file, a checkpoint for another --ep, or safetensors\n"
    "  --threads N (train, eval, generate, convert): threads per process; without it\n"
    "           OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK, else this node's cores / its ranks\n"
    "           (printed in one line at start)\n"
    "  tokenize --tokenizer FILE.model|bytes [--input FILE]\n"
    "           each line's ids (the tokenizer of anyk prepare, generate and eval)\n"
    "\n"
    "example:\n"
    "  anyk prepare --input /usr/share/games/fortunes --out data/fortunes\n"
    "  anyk train --data data/fortunes --run-dir runs/quick --k-strategy layer --k-min 1 --k-max 4\n"
    "  anyk eval --run-dir runs/quick --data data/fortunes --layer-k 4,3,2,1\n"
    "  anyk generate --run-dir runs/quick --prompt 'The ' --max-new 200 --k 1\n"
    "  anyk convert --checkpoint runs/quick/checkpoints/latest --to safetensors --out quick.safetensors\n";

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
      "val-fraction", po::value(&val_fraction)->default_value(0.05),
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
  ANYK_CHECK(shard_tokens >= 0, "--shard-tokens " << shard_tokens << " must be >= 0 hint: 0 writes one train.bin "
                                                     "and one val.bin");
  cmd.require(!inputs.empty(), "input");
  cmd.require(!out.empty(), "out");
  ANYK_CHECK(val_fraction > 0 && val_fraction < 1,
             "--val-fraction " << val_fraction << " must be in (0, 1)");
  ANYK_CHECK(tokenizer == "sp" || vocab_size == 0, "--vocab-size is for --tokenizer sp (given: --tokenizer "
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

// One line, whatever the message holds.
void print_error(std::string msg) {
  for (char& c : msg)
    if (c == '\n' || c == '\r') c = ' ';
  std::fflush(stdout);
  std::fprintf(stderr, "anyk: error: %s\n", msg.c_str());
}

}  // namespace

int run_cli(int argc, char** argv) {
  // HDF5's exit-time cleanup would close a file whose close already failed (a full disk) a second
  // time and crash; anyk closes every file itself.
  io::h5::disable_atexit();
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (cmd == "--version" || cmd == "version") {
      std::fputs(launch::version_text().c_str(), stdout);
      return 0;
    }
    // Each command parses argv from its own name on (argv[0] is skipped by Program_options).
    if (cmd == "prepare") return prepare_command(argc - 1, argv + 1);
    if (cmd == "train") return launch::train_command(argc - 1, argv + 1);
    if (cmd == "eval") return launch::eval_command(argc - 1, argv + 1);
    if (cmd == "convert") return launch::convert_command(argc - 1, argv + 1);
    if (cmd == "generate") return launch::generate_command(argc - 1, argv + 1);
    if (cmd == "tokenize") return launch::tokenize_command(argc - 1, argv + 1);
    ANYK_CHECK(false, "unknown command '" << cmd
                                          << "' hint: commands are prepare, train, eval, convert, generate, tokenize; see anyk --help");
  } catch (const ReportedError&) {
    return 2;  // another rank printed the error; every rank stops cleanly, no abort needed
  } catch (const AgreedError& e) {
    print_error(e.what());  // every rank knows: stop cleanly, no abort
    return 2;
  } catch (const Error& e) {
    print_error(e.what());
  } catch (const std::bad_alloc&) {
    print_error("out of memory (std::bad_alloc) hint: lower --batch, --seq-len or the model size; the "
                "start-up line 'memory:' shows what a training run needs");
  } catch (const po::error& e) {
    print_error(std::string(e.what()) + " hint: see anyk " + cmd + " --help");
  } catch (const std::exception& e) {
    print_error(e.what());
  }
  // Under MPI one failing rank must bring the whole job down now, not leave the others waiting
  // in a collective: the message is already printed, so abort every rank.
  abort_job_if_parallel(2);
  return 2;
}

}  // namespace anyk
