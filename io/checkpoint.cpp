// Sharded checkpoints: file writers and readers over launch/h5.h, views of a live model, and the
// trainer's collective save with the .tmp + barrier + rename + `latest` protocol; see checkpoint.h.
#include "io/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "io/fsio.h"
#include "core/check.h"
#include "runtime/device.h"

namespace anyk::io {

namespace fs = std::filesystem;

namespace {

int64_t numel_of(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::vector<int64_t> dims_of(const Shape& s) { return std::vector<int64_t>(s.d.begin(), s.d.begin() + s.ndim); }

// Refs either all carry moments or none do; returns which.
template <class Refs, class Get> bool moments_of(const Refs& refs, Get get, const std::string& what) {
  bool any = false, all = true;
  for (const auto& r : refs) {
    const TensorRef& t = get(r);
    const bool has = t.m && t.v;
    any = any || has;
    all = all && has;
  }
  ANYK_CHECK(any == all || refs.empty(), what << ": some tensors have optimizer moments and some not");
  return any && !refs.empty();
}

void check_header(hid_t f, const std::string& path, const std::string& kind) {
  const std::string format = h5::read_attr_string(f, path, "format");
  ANYK_CHECK(format == "anyk-checkpoint",
             path << " has format '" << format << "', expected 'anyk-checkpoint'"
                  << (format == "anyk-weights" ? " hint: pass it as --weights, or convert it with anyk convert" : ""));
  const int64_t version = h5::read_attr_int(f, path, "version");
  ANYK_CHECK(version == kCheckpointVersion, path << ": unknown checkpoint format version " << version
                                                 << " (attribute 'version'); this anyk reads version "
                                                 << kCheckpointVersion << " hint: use the anyk build that wrote it");
  const std::string k = h5::read_attr_string(f, path, "kind");
  ANYK_CHECK(k == kind, path << " has kind '" << k << "', expected '" << kind << "'");
}

void write_common_attrs(hid_t f, const std::string& path, const CheckpointMeta& meta, const char* kind) {
  h5::write_attr(f, path, "format", "anyk-checkpoint");
  h5::write_attr(f, path, "version", kCheckpointVersion);
  h5::write_attr(f, path, "kind", kind);
  h5::write_attr(f, path, "checksum", "crc32");
  h5::write_attr(f, path, "step", meta.step);
  h5::write_attr(f, path, "ep_size", meta.ep_size);
  h5::write_attr(f, path, "experts_per_rank", int64_t(meta.model.experts / meta.ep_size));
  h5::write_model_attrs(f, path, meta.model);
}

}  // namespace

void write_run_state_attrs(hid_t f, const std::string& path, const CheckpointMeta& meta) {
  h5::write_attr(f, path, "step", meta.step);
  h5::write_attr(f, path, "seed", meta.seed);
  h5::write_attr(f, path, "loader_position", meta.loader_position);
  h5::write_attr(f, path, "global_seqs", meta.global_seqs);
  h5::write_attr(f, path, "adam_step", meta.adam_step);
  h5::write_attr(f, path, "world_size", meta.world_size);
  h5::write_attr(f, path, "ep_size", meta.ep_size);
  h5::write_attr(f, path, "micro_batch", meta.micro_batch);
  h5::write_attr(f, path, "config_ini", meta.config_ini);
  h5::write_attr(f, path, "train_shards", meta.train_shards);
}

void read_run_state_attrs(hid_t f, const std::string& path, CheckpointMeta& m) {
  m.step = h5::read_attr_int(f, path, "step");
  m.seed = h5::read_attr_int(f, path, "seed");
  m.loader_position = h5::read_attr_int(f, path, "loader_position");
  m.global_seqs = h5::read_attr_int(f, path, "global_seqs");
  m.adam_step = h5::read_attr_int(f, path, "adam_step");
  m.world_size = h5::read_attr_int(f, path, "world_size");
  m.ep_size = h5::read_attr_int(f, path, "ep_size");
  m.micro_batch = h5::attr_exists(f, "micro_batch") ? h5::read_attr_int(f, path, "micro_batch") : 0;
  m.config_ini = h5::read_attr_string(f, path, "config_ini");
  m.train_shards = h5::attr_exists(f, "train_shards") ? h5::read_attr_string(f, path, "train_shards") : "";
}

namespace {

std::string expert_group(int id) { return "experts/" + std::to_string(id); }

// Writes `shape` floats at p (in the memory of device d) as dataset `name`: directly from host
// memory, otherwise staged into `stage` (grown as needed) with the copy ops.
void write_dev_f32(hid_t loc, const std::string& path, const std::string& name, const float* p, Device d,
                   const std::vector<int64_t>& shape, std::vector<float>& stage) {
  if (d == Device::CPU) return h5::write_f32(loc, path, name, p, shape);
  const int64_t n = numel_of(shape);
  stage.resize(size_t(std::max<int64_t>(n, 1)));
  if (n) allocator(d).to_host(stage.data(), p, size_t(n) * sizeof(float));
  h5::write_f32(loc, path, name, stage.data(), shape);
}

// The reverse of write_dev_f32: the dataset (shape and CRC checked) into p on device d.
void read_dev_f32(hid_t loc, const std::string& path, const std::string& name, float* p, Device d,
                  const std::vector<int64_t>& shape, std::vector<float>& stage) {
  if (d == Device::CPU) return h5::read_f32(loc, path, name, p, shape);
  const int64_t n = numel_of(shape);
  stage.resize(size_t(std::max<int64_t>(n, 1)));
  h5::read_f32(loc, path, name, stage.data(), shape);
  if (n) allocator(d).from_host(p, stage.data(), size_t(n) * sizeof(float));
}

// Reads one ref's value and (when wanted) moments from `prefix`{params,adam_m,adam_v}/name.
void read_ref(hid_t f, const std::string& path, const std::string& prefix, const TensorRef& t,
              std::vector<float>& stage) {
  read_dev_f32(f, path, prefix + "params/" + t.name, t.value, t.device, t.shape, stage);
  if (!t.m && !t.v) return;
  ANYK_CHECK(h5::link_exists(f, prefix + "adam_m"),
             path << " has no optimizer state (no group '" << prefix << "adam_m') hint: it was converted with "
                  << "--no-optimizer; it can be evaluated, not resumed");
  const Device md = t.host_moments ? Device::CPU : t.device;
  if (t.moments_to >= 0) {  // only [moments_from, moments_to) is wanted: through the staging
    ANYK_CHECK(t.moments_from >= 0 && t.moments_from <= t.moments_to && t.moments_to <= numel_of(t.shape),
               "checkpoint read: moments [" << t.moments_from << ", " << t.moments_to << ") of " << t.name);
    const size_t bytes = size_t(t.moments_to - t.moments_from) * sizeof(float);
    stage.resize(size_t(std::max<int64_t>(numel_of(t.shape), 1)));
    for (int k = 0; k < 2; ++k) {
      float* dst = k == 0 ? t.m : t.v;
      if (!dst) continue;
      h5::read_f32(f, path, prefix + (k == 0 ? "adam_m/" : "adam_v/") + t.name, stage.data(), t.shape);
      if (bytes) allocator(md).from_host(dst, stage.data() + t.moments_from, bytes);
    }
    return;
  }
  if (t.m) read_dev_f32(f, path, prefix + "adam_m/" + t.name, t.m, md, t.shape, stage);
  if (t.v) read_dev_f32(f, path, prefix + "adam_v/" + t.name, t.v, md, t.shape, stage);
}

Device moment_device(const TensorRef& t) { return t.host_moments ? Device::CPU : t.device; }

void check_same_device(const ParamStore& ps, const AdamW* opt) {
  ANYK_CHECK(!opt || opt->device() == ps.device(),
             "checkpoint: parameters on " << device_name(ps.device()) << " but the optimizer on "
                                          << device_name(opt->device()) << " hint: build both on one device");
}

}  // namespace

std::string checkpoints_dir(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

std::string step_dir_name(int64_t step) { return "step_" + std::to_string(step); }

std::string resolve_checkpoint(const std::string& spec, const std::string& run_dir) {
  fs::path latest;
  if (spec == "latest") {
    ANYK_CHECK(!run_dir.empty(), "'latest' needs --run-dir hint: or pass the checkpoint directory itself");
    latest = fs::path(checkpoints_dir(run_dir)) / "latest";
    ANYK_CHECK(fs::is_regular_file(latest),
               latest.string() << " not found hint: the run has not saved a checkpoint yet (see --save-every)");
  } else if (fs::is_regular_file(spec) && fs::path(spec).filename() == "latest") {
    latest = spec;
  } else {
    ANYK_CHECK(!fs::is_regular_file(spec) || !spec.ends_with(".h5"),
               spec << " is a file, not a checkpoint directory hint: resume takes a checkpoint directory "
                       "(RUN_DIR/checkpoints/step_N) or latest; to start a new run from weights use --init-weights "
                    << spec);
    ANYK_CHECK(fs::is_directory(spec), "checkpoint directory " << spec << " not found");
    return spec;
  }
  std::ifstream in(latest, std::ios::binary);
  std::string name;
  std::getline(in, name);
  // A file cut short or zero-filled by a crash or power loss holds NUL or other control bytes:
  // say so (the path would otherwise be cut at the first NUL) and name a step directory to use.
  const bool binary = std::any_of(name.begin(), name.end(), [](char c) { return (unsigned char)c < 0x20 || c == 0x7f; });
  if (binary || name.empty()) {
    int64_t best = -1;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(latest.parent_path(), ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("step_", 0) != 0 || n.size() == 5 || n.find_first_not_of("0123456789", 5) != std::string::npos) continue;
      if (!fs::is_regular_file(e.path() / "meta.h5")) continue;
      best = std::max<int64_t>(best, std::stoll(n.substr(5)));
    }
    const std::string fix = best >= 0 ? "pass --resume " + (latest.parent_path() / step_dir_name(best)).string() +
                                            " (the newest step directory), or write step_" + std::to_string(best) +
                                            " into it"
                                      : "write the name of a step directory (e.g. step_100) into it";
    ANYK_FAIL(latest.string() << (name.empty() ? " is empty" : " holds binary data (NUL or control bytes)")
                              << ", not a checkpoint name: it was damaged, e.g. by a crash or power loss while "
                                 "it was written hint: "
                              << fix);
  }
  ANYK_CHECK(name.find('/') == std::string::npos,
             latest.string() << " does not name a checkpoint directory hint: it should hold e.g. step_100");
  const fs::path dir = latest.parent_path() / name;
  ANYK_CHECK(fs::is_directory(dir), latest.string() << " names " << dir.string() << ", which does not exist");
  return dir.string();
}

namespace {

// Moment pointers of one ref: base + offset, or null when there are no moments.
void set_moments(TensorRef& t, float* m, float* v, int64_t off, bool host) {
  if (!m || !v) return;
  t.m = m + off;
  t.v = v + off;
  t.host_moments = host;
}

// The refs over region bases m, v (the region's moments; null: none).
std::vector<TensorRef> dense_refs_at(ParamStore& ps, float* m, float* v, bool host) {
  std::vector<TensorRef> out;
  float* base = static_cast<float*>(ps.region_data(Region::Dense));
  for (const ParamInfo& i : ps.infos()) {
    if (i.region != Region::Dense) continue;
    TensorRef t{i.name, dims_of(i.shape), base + i.offset, nullptr, nullptr, ps.device()};
    set_moments(t, m, v, i.offset, host);
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<ExpertRef> expert_refs_at(ParamStore& ps, float* m, float* v, bool host, int first_expert) {
  std::vector<ExpertRef> out;
  float* base = static_cast<float*>(ps.region_data(Region::Expert));
  int E_local = -1;
  for (const ParamInfo& i : ps.infos()) {
    if (i.region != Region::Expert) continue;
    ANYK_CHECK(E_local < 0 || E_local == int(i.shape[0]), "expert tensors disagree on E_local");
    E_local = int(i.shape[0]);
  }
  // Expert-major: every tensor of one expert together, as they are grouped in the file.
  for (int j = 0; j < E_local; ++j) {
    for (const ParamInfo& i : ps.infos()) {
      if (i.region != Region::Expert) continue;
      // (E_local, a, b) -> expert j's (a, b)
      std::vector<int64_t> shape(i.shape.d.begin() + 1, i.shape.d.begin() + i.shape.ndim);
      const int64_t off = i.offset + int64_t(j) * numel_of(shape);
      ExpertRef r{first_expert + j, TensorRef{i.name, shape, base + off, nullptr, nullptr, ps.device()}};
      set_moments(r.t, m, v, off, host);
      out.push_back(std::move(r));
    }
  }
  return out;
}

float* data_or_null(std::vector<float>& x) { return x.empty() ? nullptr : x.data(); }

}  // namespace

std::vector<TensorRef> dense_refs(ParamStore& ps, AdamW* opt, int dense_region) {
  check_same_device(ps, opt);
  return opt ? dense_refs_at(ps, opt->m(dense_region), opt->v(dense_region), false)
             : dense_refs_at(ps, nullptr, nullptr, false);
}

std::vector<ExpertRef> expert_refs(ParamStore& ps, AdamW* opt, int expert_region, int first_expert) {
  check_same_device(ps, opt);
  return opt ? expert_refs_at(ps, opt->m(expert_region), opt->v(expert_region), false, first_expert)
             : expert_refs_at(ps, nullptr, nullptr, false, first_expert);
}

std::vector<TensorRef> dense_refs(ParamStore& ps, RegionMoments& whole) {
  return dense_refs_at(ps, data_or_null(whole.m), data_or_null(whole.v), true);
}

std::vector<ExpertRef> expert_refs(ParamStore& ps, RegionMoments& whole, int first_expert) {
  return expert_refs_at(ps, data_or_null(whole.m), data_or_null(whole.v), true, first_expert);
}

RegionMoments gather_moments(const AdamW& opt, int region, int64_t n, const Comm& group) {
  RegionMoments out;
  const bool root = group.rank() == 0;
  const BlockRange b = block_range(n, group.size(), group.rank());
  ANYK_CHECK(region >= 0 ? opt.region_size(region) == b.size() : b.size() == 0,
             "--zero 1: the optimizer holds " << (region >= 0 ? opt.region_size(region) : 0)
                                              << " moments of this rank's block of " << b.size());
  if (root) {
    out.m.resize(size_t(n));
    out.v.resize(size_t(n));
  }
  std::vector<float> block(size_t(b.size()));
  for (int k = 0; k < 2; ++k) {
    if (b.size()) to_host(block.data(), k == 0 ? opt.m_tensor(region) : opt.v_tensor(region));
    group.gather_blocks(block.data(), n, root ? (k == 0 ? out.m : out.v).data() : nullptr, 0);
  }
  return out;
}

namespace {
// Points t's moments at the part of AdamW region `region` (block b of the ParamStore region whose
// data starts at base) that overlaps t, or at nothing.
void cut_moments(TensorRef& t, const float* base, AdamW& opt, int region, BlockRange b) {
  const int64_t off = t.value - base, n = numel_of(t.shape);
  const int64_t lo = std::max(off, b.begin), hi = std::min(off + n, b.end);
  if (hi <= lo) return;
  t.m = opt.m(region) + (lo - b.begin);
  t.v = opt.v(region) + (lo - b.begin);
  t.moments_from = lo - off;
  t.moments_to = hi - off;
}
}  // namespace

std::vector<TensorRef> dense_refs(ParamStore& ps, AdamW& opt, int region, BlockRange b) {
  check_same_device(ps, &opt);
  std::vector<TensorRef> out = dense_refs_at(ps, nullptr, nullptr, false);
  const float* base = static_cast<const float*>(ps.region_data(Region::Dense));
  for (TensorRef& t : out) cut_moments(t, base, opt, region, b);
  return out;
}

std::vector<ExpertRef> expert_refs(ParamStore& ps, AdamW& opt, int region, BlockRange b, int first_expert) {
  check_same_device(ps, &opt);
  std::vector<ExpertRef> out = expert_refs_at(ps, nullptr, nullptr, false, first_expert);
  const float* base = static_cast<const float*>(ps.region_data(Region::Expert));
  for (ExpertRef& r : out) cut_moments(r.t, base, opt, region, b);
  return out;
}

void write_meta_file(const std::string& path, const CheckpointMeta& meta, const std::vector<TensorRef>& dense) {
  const bool moments = moments_of(dense, [](const TensorRef& t) -> const TensorRef& { return t; }, path);
  std::vector<float> stage;  // host staging for refs off the CPU
  h5::write_file(path, [&](hid_t f) {
    write_common_attrs(f, path, meta, "meta");
    h5::write_attr(f, path, "seed", meta.seed);
    h5::write_attr(f, path, "loader_position", meta.loader_position);
    h5::write_attr(f, path, "global_seqs", meta.global_seqs);
    h5::write_attr(f, path, "adam_step", meta.adam_step);
    h5::write_attr(f, path, "world_size", meta.world_size);
    h5::write_attr(f, path, "micro_batch", meta.micro_batch);
    h5::write_attr(f, path, "has_optimizer", int64_t(moments ? 1 : 0));
    h5::write_attr(f, path, "config_ini", meta.config_ini);
    h5::write_attr(f, path, "train_shards", meta.train_shards);
    {
      h5::Handle g = h5::create_group(f, path, "params");
      for (const TensorRef& t : dense) write_dev_f32(g.id, path, t.name, t.value, t.device, t.shape, stage);
    }
    if (moments) {
      h5::Handle gm = h5::create_group(f, path, "adam_m");
      for (const TensorRef& t : dense) write_dev_f32(gm.id, path, t.name, t.m, moment_device(t), t.shape, stage);
      h5::Handle gv = h5::create_group(f, path, "adam_v");
      for (const TensorRef& t : dense) write_dev_f32(gv.id, path, t.name, t.v, moment_device(t), t.shape, stage);
    }
  });
}

void write_experts_file(const std::string& path, const CheckpointMeta& meta, int ep_rank,
                        const std::vector<ExpertRef>& experts) {
  const bool moments = moments_of(experts, [](const ExpertRef& r) -> const TensorRef& { return r.t; }, path);
  const int E_local = meta.model.experts / int(meta.ep_size);
  std::map<int, std::vector<const TensorRef*>> by_id;
  for (const ExpertRef& r : experts) {
    ANYK_CHECK(r.expert / E_local == ep_rank, path << ": expert " << r.expert << " does not belong to ep rank "
                                                   << ep_rank << " of " << meta.ep_size);
    by_id[r.expert].push_back(&r.t);
  }
  ANYK_CHECK(int(by_id.size()) == E_local, path << ": got " << by_id.size() << " experts, expected " << E_local);
  std::vector<float> stage;  // host staging for refs off the CPU
  h5::write_file(path, [&](hid_t f) {
    write_common_attrs(f, path, meta, "experts");
    h5::write_attr(f, path, "ep_rank", int64_t(ep_rank));
    h5::write_attr(f, path, "first_expert", int64_t(ep_rank) * E_local);
    h5::write_attr(f, path, "has_optimizer", int64_t(moments ? 1 : 0));
    h5::Handle top = h5::create_group(f, path, "experts");
    for (const auto& [id, refs] : by_id) {
      h5::Handle g = h5::create_group(top.id, path, std::to_string(id));
      const char* groups[] = {"params", "adam_m", "adam_v"};
      for (int k = 0; k < (moments ? 3 : 1); ++k) {
        h5::Handle sub = h5::create_group(g.id, path, groups[k]);
        for (const TensorRef* t : refs)
          write_dev_f32(sub.id, path, t->name, k == 0 ? t->value : k == 1 ? t->m : t->v,
                        k == 0 ? t->device : moment_device(*t), t->shape, stage);
      }
    }
  });
}

CheckpointMeta read_checkpoint_meta(const std::string& dir) {
  ANYK_CHECK(fs::is_directory(dir), "checkpoint directory " << dir << " not found");
  const std::string path = (fs::path(dir) / "meta.h5").string();
  ANYK_CHECK(fs::is_regular_file(path), path << " not found hint: " << dir << " is not a complete anyk checkpoint");
  h5::Handle f = h5::open_file(path);
  check_header(f.id, path, "meta");
  CheckpointMeta m;
  read_run_state_attrs(f.id, path, m);
  m.model = h5::read_model_attrs(f.id, path);
  ANYK_CHECK(m.step >= 0 && m.adam_step >= 0 && m.loader_position >= 0 && m.global_seqs >= 0,
             path << ": negative step, adam_step, loader_position or global_seqs");
  ANYK_CHECK(m.ep_size >= 1 && m.model.experts >= 1 && m.model.experts % m.ep_size == 0,
             path << ": attribute ep_size " << m.ep_size << " does not divide experts " << m.model.experts);
  m.model.validate();
  for (int64_t r = 0; r < m.ep_size; ++r) {
    const fs::path shard = fs::path(dir) / ("experts_" + std::to_string(r) + ".h5");
    ANYK_CHECK(fs::is_regular_file(shard), "missing shard: " << shard.string() << " not found (the checkpoint was "
                                                              << "saved with ep " << m.ep_size << ", so experts_0.h5"
                                                              << " .. experts_" << m.ep_size - 1 << ".h5 are needed)");
  }
  // Bound the model size by the files' bytes, before eval or convert build a model of that size.
  int64_t files = file_bytes(path);
  for (int64_t r = 0; r < m.ep_size; ++r)
    files += file_bytes((fs::path(dir) / ("experts_" + std::to_string(r) + ".h5")).string());
  h5::check_params_fit(m.model, files, path, "the checkpoint's files hold",
                       "the file is corrupt; use an older checkpoint");
  return m;
}

void read_checkpoint_tensors(const std::string& dir, const CheckpointMeta& meta, const std::vector<TensorRef>& dense,
                             const std::vector<ExpertRef>& experts,
                             const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t total = int64_t(dense.size() + experts.size());
  int64_t done = 0;
  std::vector<float> stage;  // host staging for refs off the CPU
  auto tick = [&] {
    ++done;
    if (progress) progress(done, total);
  };
  {
    const std::string path = (fs::path(dir) / "meta.h5").string();
    h5::Handle f = h5::open_file(path);
    check_header(f.id, path, "meta");
    for (const TensorRef& t : dense) {
      read_ref(f.id, path, "", t, stage);
      tick();
    }
  }
  const int E_local = meta.model.experts / int(meta.ep_size);
  std::map<int, std::pair<std::string, h5::Handle>> shards;  // opened on first use
  for (const ExpertRef& r : experts) {
    ANYK_CHECK(r.expert >= 0 && r.expert < meta.model.experts,
               "expert id " << r.expert << " outside [0, " << meta.model.experts << ")");
    const int shard = r.expert / E_local;
    auto it = shards.find(shard);
    if (it == shards.end()) {
      const std::string path = (fs::path(dir) / ("experts_" + std::to_string(shard) + ".h5")).string();
      ANYK_CHECK(fs::is_regular_file(path), "missing shard: " << path << " not found (it holds experts "
                                                              << shard * E_local << ".." << (shard + 1) * E_local - 1
                                                              << ")");
      h5::Handle f = h5::open_file(path);
      check_header(f.id, path, "experts");
      const int64_t step = h5::read_attr_int(f.id, path, "step");
      const int64_t ep = h5::read_attr_int(f.id, path, "ep_size");
      const int64_t rank = h5::read_attr_int(f.id, path, "ep_rank");
      ANYK_CHECK(step == meta.step && ep == meta.ep_size && rank == shard,
                 path << " belongs to another checkpoint: step " << step << ", ep_size " << ep << ", ep_rank " << rank
                      << " where meta.h5 has step " << meta.step << ", ep_size " << meta.ep_size
                      << " and this shard should be ep_rank " << shard);
      h5::check_same_shape(h5::read_model_attrs(f.id, path), meta.model, path, "meta.h5");
      it = shards.emplace(shard, std::make_pair(path, std::move(f))).first;
    }
    read_ref(it->second.second.id, it->second.first, expert_group(r.expert) + "/", r.t, stage);
    tick();
  }
}

namespace {

// Renames the complete checkpoints/step_<n>.tmp to step_<n> (an earlier step_<n> from an abandoned
// attempt moved aside first) and fsyncs the directory; on failure the .tmp directory is removed.
void publish_step_dir(const fs::path& cdir, const std::string& name) {
  const fs::path tmp = cdir / (name + ".tmp"), final_dir = cdir / name;
  auto drop_tmp = [&] { remove_quietly(tmp.string()); };
  try {
    h5::fsync_path(tmp.string());
    std::error_code ec;
    if (fs::exists(final_dir)) {  // a save of this step from an abandoned earlier attempt
      const fs::path aside = cdir / (name + ".old.tmp");
      fs::remove_all(aside, ec);
      fs::rename(final_dir, aside, ec);
      if (ec) fail_io("moving aside", final_dir.string(), ec.value(), kCheckpointSpaceHint);
    }
    fs::rename(tmp, final_dir, ec);
    if (ec) fail_io("renaming " + tmp.string() + " to", final_dir.string(), ec.value(), kCheckpointSpaceHint);
  } catch (...) {
    drop_tmp();
    throw;
  }
  h5::fsync_path(cdir.string());
}

}  // namespace

int64_t save_checkpoint(const ProcessGroups& g, const std::string& run_dir, const CheckpointMeta& meta,
                        const std::vector<TensorRef>& dense, const std::vector<ExpertRef>& experts, int keep) {
  const Comm& world = g.world;
  const bool root = world.rank() == 0;
  const fs::path cdir = checkpoints_dir(run_dir);
  const std::string name = step_dir_name(meta.step);
  const fs::path tmp = cdir / (name + ".tmp");
  // On a failure on any rank (a full disk, say), rank 0 removes the half-written step_<n>.tmp;
  // the previous checkpoint and `latest` are untouched.
  auto drop_tmp = [&] { remove_quietly(tmp.string()); };
  agree_or_throw(
      world,
      [&] {
        if (!root) return;
        std::error_code ec;
        fs::create_directories(cdir, ec);
        if (ec) fail_io("creating directory", cdir.string(), ec.value(), kCheckpointSpaceHint);
        fs::remove_all(tmp, ec);
        fs::create_directories(tmp, ec);
        if (ec) fail_io("creating directory", tmp.string(), ec.value(), kCheckpointSpaceHint);
      },
      drop_tmp);  // the .tmp directory exists for every writer

  int64_t bytes = 0;
  agree_or_throw(
      world,
      [&] {
        if (root) {
          const std::string path = (tmp / "meta.h5").string();
          write_meta_file(path, meta, dense);
          bytes += file_bytes(path);
          if (const char* f = std::getenv("ANYK_FAULT_INJECT_SAVE"); f && std::atoll(f) == meta.step) {
            std::fprintf(stderr, "anyk: ANYK_FAULT_INJECT_SAVE=%s: rank 0 exits in the middle of saving %s\n", f,
                         tmp.c_str());
            std::fflush(stderr);
            ::_exit(9);
          }
        }
        if (world.rank() < g.ep_size) {  // the first replica of every expert: world ranks [0, ep)
          const std::string path = (tmp / ("experts_" + std::to_string(g.ep.rank()) + ".h5")).string();
          write_experts_file(path, meta, g.ep.rank(), experts);
          bytes += file_bytes(path);
        }
      },
      drop_tmp);  // every file is written and fsynced
  if (!root) return bytes;

  publish_step_dir(cdir, name);
  write_file_atomic((cdir / "latest").string(), name + "\n", kCheckpointSpaceHint);  // latest.tmp + fsync + rename
  // Prune: keep the newest `keep` complete checkpoints up to this one; drop stale .tmp dirs
  // (saves killed part-way). Checkpoints newer than this one (an abandoned attempt that went
  // further before a resume from an older step) are left alone. A checkpoint is first renamed
  // to step_<n>.del.tmp (atomic), then deleted, so a kill part-way through the deletion leaves a
  // .tmp directory that the next save removes, never a step_<n>/ without its meta.h5.
  static const std::regex complete("step_([0-9]+)");
  std::vector<std::pair<int64_t, fs::path>> older;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(cdir, ec)) {
    const std::string n = e.path().filename().string();
    std::smatch mt;
    if (e.is_directory() && n.size() > 4 && n.ends_with(".tmp")) {
      fs::remove_all(e.path(), ec);
    } else if (e.is_directory() && std::regex_match(n, mt, complete)) {
      const int64_t s = std::stoll(mt[1].str());
      if (s <= meta.step) older.emplace_back(s, e.path());
    }
  }
  std::sort(older.begin(), older.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t i = size_t(std::max(keep, 1)); i < older.size(); ++i) {
    const fs::path doomed = older[i].second.string() + ".del.tmp";
    fs::rename(older[i].second, doomed, ec);
    if (const char* f = std::getenv("ANYK_FAULT_INJECT_PRUNE"); f && std::atoll(f) == meta.step) {
      std::fprintf(stderr, "anyk: ANYK_FAULT_INJECT_PRUNE=%s: exiting while pruning %s\n", f, doomed.c_str());
      std::fflush(stderr);
      ::_exit(9);  // as a kill -9 between the rename and the deletion would
    }
    if (!ec) fs::remove_all(doomed, ec);
  }
  return bytes;
}

}  // namespace anyk::io
