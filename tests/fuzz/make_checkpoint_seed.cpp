// Writes the seed of the checkpoint harness: a real sharded checkpoint of a tiny model (L=1 C=8
// NH=2 E=2 H=8 T=8 V=16, with AdamW moments, ep 1) made by anyk's own writers (write_meta_file,
// write_experts_file, as save_checkpoint calls them), loaded back once as a check, and packed as
// fuzz_checkpoint's input: u32 LE size of meta.h5, meta.h5, experts_0.h5. With WEIGHTS_FILE it
// also writes the same model with save_weights (fuzz_weights' seed) and reads it back.
// usage: make_checkpoint_seed OUT_FILE [WEIGHTS_FILE]
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/weights.h"
#include "launch/options.h"
#include "model/lm.h"
#include "optim/adamw.h"
#include "parallel/dispatcher.h"

using namespace anyk;
using namespace anyk::launch;
using namespace anyk::io;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: make_checkpoint_seed OUT_FILE [WEIGHTS_FILE]\n");
    return 2;
  }
  TrainOptions o;
  o.layers = 1, o.dim = 8, o.heads = 2, o.experts = 2, o.expert_hidden = 8, o.seq_len = 8, o.vocab = 16;
  o.data = "data", o.run_dir = "run", o.k_max = 2, o.steps = 4, o.warmup = 1;
  OptionTable table("config");
  bind_train_options(table, o);
  CheckpointMeta meta;
  meta.step = 4, meta.seed = 1, meta.loader_position = 32, meta.global_seqs = 8, meta.adam_step = 4;
  meta.world_size = 1, meta.ep_size = 1;
  meta.model = model_config(o);
  meta.config_ini = table.to_ini();

  LocalDispatcher disp(meta.model.experts);
  LM lm(meta.model, disp);
  lm.init(1);
  ParamStore& ps = lm.params();
  AdamW opt(AdamWConfig{});
  int region[kNumRegions] = {-1, -1};
  for (Region r : {Region::Dense, Region::Expert}) {
    const int64_t n = ps.region_numel(r);
    region[int(r)] = opt.add_region(static_cast<float*>(ps.region_data(r)),
                                    static_cast<const float*>(ps.region_grad(r)), n, {{0, n, true}});
    for (int64_t i = 0; i < n; ++i) opt.m(region[int(r)])[i] = 1e-3f * float(i % 7), opt.v(region[int(r)])[i] = 1e-6f;
  }
  const fs::path dir = fs::path(argv[1]).string() + ".d";
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_meta_file((dir / "meta.h5").string(), meta, dense_refs(ps, &opt, region[0]));
  write_experts_file((dir / "experts_0.h5").string(), meta, 0, expert_refs(ps, &opt, region[1], 0));

  // Load it back, as the harness does.
  CheckpointMeta back = read_checkpoint_meta(dir.string());
  LM lm2(back.model, disp);
  AdamW opt2(AdamWConfig{});
  int region2[kNumRegions];
  for (Region r : {Region::Dense, Region::Expert}) {
    const int64_t n = lm2.params().region_numel(r);
    region2[int(r)] = opt2.add_region(static_cast<float*>(lm2.params().region_data(r)),
                                      static_cast<const float*>(lm2.params().region_grad(r)), n, {{0, n, true}});
  }
  read_checkpoint_tensors(dir.string(), back, dense_refs(lm2.params(), &opt2, region2[0]),
                          expert_refs(lm2.params(), &opt2, region2[1], 0));

  auto slurp = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
  };
  std::vector<char> m = slurp(dir / "meta.h5"), e = slurp(dir / "experts_0.h5");
  std::ofstream out(argv[1], std::ios::binary);
  const uint32_t n = uint32_t(m.size());
  for (int i = 0; i < 4; ++i) out.put(char(n >> (8 * i)));
  out.write(m.data(), std::streamsize(m.size()));
  out.write(e.data(), std::streamsize(e.size()));
  fs::remove_all(dir);
  std::printf("%s: meta.h5 %zu bytes, experts_0.h5 %zu bytes\n", argv[1], m.size(), e.size());
  if (!out) return 1;
  if (argc == 3) {
    save_weights(argv[2], lm);
    LM lm3(weights_config(argv[2]), disp);
    load_weights(argv[2], lm3);
    for (Region r : {Region::Dense, Region::Expert})
      if (std::memcmp(lm3.params().region_data(r), ps.region_data(r), size_t(ps.region_numel(r)) * 4) != 0) {
        std::fprintf(stderr, "%s: read back differs from the model written\n", argv[2]);
        return 1;
      }
    std::printf("%s: %ju bytes\n", argv[2], std::uintmax_t(fs::file_size(argv[2])));
  }
  return 0;
}
