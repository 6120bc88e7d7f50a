// The `anyk train` options: one struct, one Boost.Program_options table that binds every field,
// the INI form (same long names) written to run_dir/config.ini and read back by --config and by
// `anyk eval`, and the translation into the library's config types.
#pragma once
#include <boost/program_options.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/k_schedule.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "runtime/tensor.h"

namespace anyk::launch {

namespace po = boost::program_options;

// Validation windows per evaluation when --eval-windows is not given: one default for train,
// eval and generate, so `generate --budget B` and `eval --budget B` choose the same schedule.
inline constexpr int64_t kDefaultEvalWindows = 64;

struct TrainOptions {
  std::string data, run_dir, config;
  // The data's tokenizer (set by train from DATA/tokenizer.model): its path and hash, or "bytes".
  std::string tokenizer, tokenizer_hash;
  int64_t steps = 1000, seed = 1;
  int layers = 4, dim = 128, heads = 4, experts = 8, expert_hidden = 128, seq_len = 128;
  int vocab = 0;  // 0: 256 (byte data)
  int batch = 16, grad_accum = 1;
  double lr = 3e-3, min_lr = 3e-4, weight_decay = 0.1, grad_clip = 1.0;
  int64_t warmup = 50;
  std::string k_strategy = "layer";
  int k_min = 1, k_max = 4, k = 2;
  int k_ideal = 0;  // emoe: largest pool size (0: min(3 k, E))
  std::string init_weights;  // start from these weights (model.h5 or consolidated), fresh optimizer
  double tau = 2.0, top_p = 0.5;  // top_p: the paper's 0.1 was for 96 experts; <= 1/E means K = k_min
  double lb_coef = 0.01, z_coef = 0.001, router_kl_weight = 0.0;
  bool no_renormalize = false;
  int64_t log_every = 10, eval_every = 200, eval_windows = kDefaultEvalWindows;
  int threads = 0;  // 0: the cores of this node divided among its ranks
  std::string device = "cpu", precision = "f32";  // runtime/devices.h
  int ep = 0;       // expert-parallel ranks (0: all ranks)
  std::string a2a = "flat";  // expert all-to-all: flat or hier
  std::string comm = "mpi";  // data-path communicator: mpi or nccl (parallel/groups.h CommKind)
  std::string recompute = "none";  // activation recompute: none or layer (model/lm.h Recompute)
  bool profile = false;
  int zero = 0;  // 1: AdamW moments sharded over each region's data-parallel group (parallel/grad_sync.h)
  int64_t save_every = 0;  // checkpoint every N steps (0 = only at the end)
  int keep = 3;            // complete checkpoints kept (older ones deleted)
  std::string resume;      // checkpoint dir, a `latest` file or "latest"; not written to config.ini
  bool overwrite = false;  // move an existing run in run_dir aside; not written to config.ini
};

// A Program_options table whose every entry also knows how to print its current value, so the
// resolved options can be written back as INI without a second list of names to keep in sync.
class OptionTable {
 public:
  explicit OptionTable(const std::string& caption) : desc_(caption) {}
  template <class T> void add(const char* name, T* field, const char* help);
  void add_switch(const char* name, bool* field, const char* help);
  po::options_description& desc() { return desc_; }
  // "name = value" lines for every bound option (strings, numbers in shortest round-trip form).
  std::string to_ini() const;

 private:
  po::options_description desc_;
  std::vector<std::pair<std::string, std::function<std::string()>>> writers_;
};

// --device and --precision of eval and generate (train binds the same in its table); checked by
// parse_device and parse_bf16 (runtime/devices.h).
extern const char* const kDeviceHelp;
extern const char* const kPrecisionHelp;       // eval, generate
extern const char* const kTrainPrecisionHelp;  // train: bf16 activation storage on every device
void add_device_options(po::options_description& desc, std::string& device, std::string& precision);

// Binds every train option (except --config and --help) to the fields of o; defaults are the
// values o holds when called.
void bind_train_options(OptionTable& table, TrainOptions& o);

// Reads an INI file of train options into o (unknown keys and bad values throw, naming the file).
void read_train_config(const std::string& path, TrainOptions& o);
// The same from INI text (e.g. a checkpoint's config_ini attribute); `what` names its source.
void read_train_config_text(const std::string& text, const std::string& what, TrainOptions& o);
// A weights (or consolidated) file's config_ini attribute into o, when the file has one (eval
// and generate --weights); returns whether it had one.
bool read_weights_config_ini(const std::string& weights, TrainOptions& o);

// Range checks on every field, with the option's name in the message. Resolves vocab 0 -> 256
// (threads 0 stays 0: each command applies launch/threads.h's rule when it starts).
void validate_train_options(TrainOptions& o);

// --comm nccl moves GPU buffers, so training needs the model on Device::CUDA. Train only: eval
// and generate read a run's config.ini whatever device they run on.
void check_comm_device(const TrainOptions& o, Device model_device);

ModelConfig model_config(const TrainOptions& o);  // router.top_p stays 0 (forced K)
KScheduleConfig k_schedule_config(const TrainOptions& o);
LrSchedule lr_schedule(const TrainOptions& o);

// INI text with each renamed key (`top-p = 0.5`, written by older versions) under its new name
// (`expert-top-p`); everything else unchanged.
std::string upgrade_config_text(const std::string& text);

// Refuses text holding a Boost.Program_options message placeholder (%name%, e.g. "%value%"):
// Boost 1.74 fills its error messages by replacing placeholders in a loop that never ends when the
// replacement holds the placeholder again, so such text must never reach it. `what` names the
// source (an argument, a config file). Called by parse_command_line and the INI readers.
void check_option_text(const std::string& text, const std::string& what);

// The command-line style every anyk command uses: long options, no prefix guessing.
int cli_style();

// Parses argv (argv[0] = the command name) with desc in cli_style(); a stray positional word is
// an error naming it. Program_options errors propagate (the caller adds the help hint).
po::parsed_options parse_command_line(int argc, char** argv, const po::options_description& desc,
                                      const std::string& command);

// The Program_options boilerplate every `anyk COMMAND` shares: --help (-h) added first, argv
// parsed with parse_command_line (any Boost error becomes a UsageError `MESSAGE hint: see anyk
// COMMAND --help`), the help text on stdout, and required options. A renamed option's old name
// (--top-p for --expert-top-p) is accepted with a note on stderr (when print_help: rank 0 of
// train). desc must outlive this.
class CommandOptions {
 public:
  CommandOptions(std::string command, po::options_description& desc);
  // Parses argv (argv[0] = the command name). With --help: prints desc (when print_help) and
  // returns false. before_notify, when given, may store more sources (a config file) into the map
  // before the values are written into their variables.
  bool parse(int argc, char** argv, bool print_help = true,
             const std::function<void(po::variables_map&)>& before_notify = {});
  // Throws `--NAME is required hint: see anyk COMMAND --help` unless given.
  void require(bool given, const std::string& name) const;
  std::string hint() const { return "hint: see anyk " + command_ + " --help"; }
  const po::variables_map& vm() const { return vm_; }

 private:
  std::string command_;
  po::options_description& desc_;
  bool help_ = false;
  po::variables_map vm_;
};

// --data DIR (`option` names it in the message): refused in one line unless it is a directory,
// saying whether it is missing or a file (a directory from `anyk prepare` is expected).
void check_data_dir(const std::string& dir, const std::string& option = "--data");

// "1,2,4" -> {1,2,4}; throws anyk::Error naming the option on anything else.
std::vector<int> parse_int_list(const std::string& text, const std::string& option);

}  // namespace anyk::launch
