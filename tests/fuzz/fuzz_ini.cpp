// libFuzzer harness for the INI config reader, through the same code path as
// `anyk train --config FILE`: launch::train_command parses the file with Boost.Program_options over
// the train OptionTable, applies the command-line overrides and runs every validation (options,
// layout, model config, K schedule, LR schedule). --data and --run-dir are forced on the command
// line (flags win over the file) to paths that do not exist, so the command always stops at the
// data check, right after validation, and never reads data or writes a file. (`anyk eval`'s
// read_train_config_text over a checkpoint's config_ini runs in fuzz_checkpoint.) anyk::Error is
// the correct refusal; any other exception escaping is a finding.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_util.h"
#include "launch/train.h"
#include "parallel/comm.h"
#include "core/check.h"

using namespace anyk;

// OpenMPI (started once, below) keeps allocations until exit, some from plugins it has already
// unloaded (frames without a module, which a suppression cannot name). The exit-time leak check is
// off for this harness only; libFuzzer's per-input leak check (-detect_leaks=1) still runs after
// every input that allocates more than it frees, which is where a leak in anyk's code shows.
extern "C" const char* __lsan_default_options() { return "leak_check_at_exit=0"; }

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // OpenMPI's own SIGABRT/SIGSEGV handlers would pre-empt libFuzzer's (which does not replace an
  // existing handler), so a finding would kill the process without saving its input.
  ::setenv("OMPI_MCA_opal_signal", "", 1);
  // MPI is started once here, as anyk's main does on the first Comm::world(), so its one-time
  // allocations are not charged to the first input by the leak checker.
  Comm::world();
  // `help = true` in a file prints the option table on stdout: keep the fuzzer's log readable.
  int null = ::open("/dev/null", O_WRONLY);
  if (null >= 0) ::dup2(null, STDOUT_FILENO);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = fuzz::temp_dir("ini");
  const std::string cfg = dir + "/config.ini";
  fuzz::write_file(cfg, data, size);
  const std::string data_dir = dir + "/no-such-data", run_dir = dir + "/no-such-run";
  const char* args[] = {"train", "--config", cfg.c_str(), "--data", data_dir.c_str(), "--run-dir", run_dir.c_str(),
                        nullptr};
  try {
    launch::train_command(7, const_cast<char**>(args));
  } catch (const Error& e) {
    fuzz::check_anyk_message("fuzz_ini", e);
  }
  return 0;
}
