// libFuzzer harness for the sharded-checkpoint loader (io/checkpoint.cpp over io/h5.cpp):
// read_checkpoint_meta, then a model built from the meta's config, as `anyk eval --checkpoint`
// and `anyk convert` do, the saved config_ini parsed as eval parses it, and
// read_checkpoint_tensors for the values and (when meta.h5 says it has them) the AdamW moments.
//
// Input: u32 little-endian n, then n bytes of meta.h5, then the bytes of experts_0.h5 (the seed in
// corpus/fuzz_checkpoint comes from make_checkpoint_seed, the real writers on a tiny model). The
// harness writes both files into a temporary step directory and loads it. anyk::Error is the
// correct refusal; any other exception, a crash, a leak, an allocation over libFuzzer's
// -malloc_limit_mb or a sanitizer report is a finding.
//
// The custom mutator keeps the two-file layout and mutates one file with mutate_h5 (h5_mutate.h),
// mostly in place (a window of up to 16 bytes, half of the time inside an object header), so the
// file's internal addresses stay valid. With ANYK_FUZZ_FIX_H5_CHECKSUMS=1 it then recomputes
// HDF5's metadata checksums and fractal-heap block checksums (h5_fix.h), so mutations reach
// attributes (the model config), dataspaces and datatypes instead of stopping at HDF5's checksum
// test; that mode finds crashes inside libhdf5 itself (docs/fuzzing.md) and is off by default.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "h5_mutate.h"
#include "io/checkpoint.h"
#include "io/h5.h"
#include "launch/options.h"
#include "model/lm.h"
#include "optim/adamw.h"
#include "parallel/dispatcher.h"
#include "core/check.h"

using namespace anyk;
using namespace anyk::launch;
using namespace anyk::io;

// A corrupt size field makes libhdf5 (C, malloc) ask for absurd amounts, e.g. 0xe90000000040
// bytes in H5C_protect; glibc's malloc returns NULL and HDF5 fails the call cleanly, which anyk
// reports as an anyk::Error. ASan would abort there instead: give malloc its production behaviour.
// C++ new (anyk's own allocations) still aborts on failure, and libFuzzer's -malloc_limit_mb still
// reports any single allocation over the limit that succeeds, from HDF5 or anyk.
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1"; }

namespace {

bool split(const uint8_t* data, size_t size, size_t& meta_len) {
  if (size < 4) return false;
  meta_len = size_t(fuzz::read_le(data, 4));
  return meta_len <= size - 4;
}

void load(const std::string& dir) {
  CheckpointMeta meta = read_checkpoint_meta(dir);
  TrainOptions o;
  read_train_config_text(meta.config_ini, dir + "/meta.h5 attribute config_ini", o);
  bool has_optimizer = false;
  {
    const std::string path = dir + "/meta.h5";
    h5::Handle f = h5::open_file(path);
    has_optimizer = h5::read_attr_int(f.id, path, "has_optimizer") != 0;
  }
  LocalDispatcher disp(meta.model.experts);
  LM lm(meta.model, disp);
  AdamW opt(AdamWConfig{});
  int region[kNumRegions] = {-1, -1};
  ParamStore& ps = lm.params();
  for (Region r : {Region::Dense, Region::Expert}) {
    const int64_t n = ps.region_numel(r);
    if (n > 0)
      region[int(r)] = opt.add_region(static_cast<float*>(ps.region_data(r)),
                                      static_cast<const float*>(ps.region_grad(r)), n, {{0, n, true}});
  }
  read_checkpoint_tensors(dir, meta, dense_refs(ps, has_optimizer ? &opt : nullptr, region[int(Region::Dense)]),
                          expert_refs(ps, has_optimizer ? &opt : nullptr, region[int(Region::Expert)], 0));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::keep_h5_free_blocks();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  size_t meta_len = 0;
  if (!split(data, size, meta_len)) return 0;
  const std::string dir = fuzz::temp_dir("checkpoint") + "/step_1";
  std::filesystem::create_directories(dir);
  fuzz::write_file(dir + "/meta.h5", data + 4, meta_len);
  fuzz::write_file(dir + "/experts_0.h5", data + 4 + meta_len, size - 4 - meta_len);
  try {
    load(dir);
  } catch (const Error& e) {
    fuzz::check_anyk_message("fuzz_checkpoint", e);
    static const bool verbose = std::getenv("ANYK_FUZZ_VERBOSE") != nullptr;  // why an input is refused
    if (verbose) std::fprintf(stderr, "fuzz_checkpoint: refused: %s\n", e.what());
  }
  fuzz::check_no_h5_objects_open("fuzz_checkpoint");
  return 0;
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  size_t meta_len = 0;
  if (!split(data, size, meta_len)) return LLVMFuzzerMutate(data, size, max_size);
  std::minstd_rand rng(seed);
  std::vector<uint8_t> parts[2] = {std::vector<uint8_t>(data + 4, data + 4 + meta_len),
                                   std::vector<uint8_t>(data + 4 + meta_len, data + size)};
  std::vector<uint8_t>& p = parts[rng() % 2];
  const size_t other = size - 4 - p.size();
  if (!fuzz::mutate_h5(p, max_size > other + 4 ? max_size - other - 4 : 0, rng)) return size;
  const size_t out = 4 + parts[0].size() + parts[1].size();
  if (out > max_size) return size;  // does not fit: keep the input (data is unchanged so far)
  const uint32_t n = uint32_t(parts[0].size());
  for (int i = 0; i < 4; ++i) data[i] = uint8_t(n >> (8 * i));
  std::memcpy(data + 4, parts[0].data(), parts[0].size());
  std::memcpy(data + 4 + parts[0].size(), parts[1].data(), parts[1].size());
  return out;
}
