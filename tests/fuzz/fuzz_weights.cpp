// libFuzzer harness for model weights files (io/weights.cpp, io/convert.cpp over io/h5.cpp): the
// input bytes are one HDF5 file, written as model.h5 into the harness's temporary directory, and
// read the two ways anyk reads such a file:
//  - as `anyk generate --weights` and `anyk eval --weights` do: weights_config (which bounds the
//    model size by the file size), the file's config_ini attribute when it has one, the model
//    config's validation, an LM built from that config, then load_weights;
//  - as `anyk convert FILE --to safetensors --no-optimizer` does (read_consolidated).
// `anyk train --init-weights` reads the same two functions against the run's own config.
// anyk::Error is the correct refusal; any other exception, a crash, a leak, an allocation over
// libFuzzer's -malloc_limit_mb, a sanitizer report or an HDF5 object left open is a finding.
//
// The seed in corpus/fuzz_weights comes from make_checkpoint_seed (anyk's own save_weights on a
// tiny model). The custom mutator is the checkpoint harness's (h5_mutate.h), on the one file,
// including its ANYK_FUZZ_FIX_H5_CHECKSUMS=1 mode.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "h5_mutate.h"
#include "io/convert.h"
#include "io/h5.h"
#include "io/weights.h"
#include "launch/options.h"
#include "model/lm.h"
#include "parallel/dispatcher.h"
#include "core/check.h"

using namespace anyk;
using namespace anyk::launch;
using namespace anyk::io;

// As in fuzz_checkpoint.cpp: libhdf5's C mallocs of corrupt sizes get NULL, as in production.
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }

namespace {

// `anyk generate --weights FILE` (launch/generate.cpp) up to the first generated token.
void load_as_generate(const std::string& path) {
  ModelConfig mc = weights_config(path);
  TrainOptions o;
  read_weights_config_ini(path, o);
  mc.validate();
  LocalDispatcher disp(mc.experts);
  LM lm(mc, disp);
  load_weights(path, lm);
}

template <class F> void refused_ok(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    fuzz::check_anyk_message("fuzz_weights", e);
    static const bool verbose = std::getenv("ANYK_FUZZ_VERBOSE") != nullptr;  // why an input is refused
    if (verbose) std::fprintf(stderr, "fuzz_weights: refused: %s\n", e.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::keep_h5_free_blocks();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = fuzz::temp_dir("weights");
  const std::string path = dir + "/model.h5", out = dir + "/out.safetensors";
  fuzz::write_file(path, data, size);
  refused_ok([&] { load_as_generate(path); });
  refused_ok([&] { convert_checkpoint(path, "safetensors", 0, out, true); });
  std::error_code ec;
  std::filesystem::remove(out, ec);
  fuzz::check_no_h5_objects_open("fuzz_weights");
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  std::minstd_rand rng(seed);
  std::vector<uint8_t> p(data, data + size);
  if (!fuzz::mutate_h5(p, max_size, rng) || p.size() > max_size) return size;
  std::memcpy(data, p.data(), p.size());
  return p.size();
}
