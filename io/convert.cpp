// Checkpoint conversion (see convert.h): the whole checkpoint is loaded into one process as a full
// model (every expert) with AdamW moments, through the same readers and views the trainer uses,
// then written in the requested form. Memory: about 4x the parameter bytes (values, the unused
// gradient buffer, m, v); fine for the models a CPU trainer produces.
#include "io/convert.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "io/fsio.h"

#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/h5.h"
#include "io/hf.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "model/lm.h"
#include "core/check.h"

namespace anyk::io {

namespace fs = std::filesystem;

namespace {

// A progress bar on stderr: redrawn in place on a terminal, a line per quarter otherwise.
class Progress {
 public:
  explicit Progress(std::string label) : label_(std::move(label)), tty_(isatty(fileno(stderr))) {}
  void operator()(int64_t done, int64_t total) {
    if (total <= 0) return;
    const int width = 30, filled = int(width * done / total);
    const int quarter = int(4 * done / total);
    if (!tty_ && quarter == last_quarter_ && done != total) return;
    last_quarter_ = quarter;
    std::fprintf(stderr, "%sconvert: %-9s [%s%s] %lld/%lld%s", tty_ ? "\r" : "", label_.c_str(),
                 std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), '.').c_str(),
                 (long long)done, (long long)total, tty_ && done != total ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  std::string label_;
  bool tty_;
  int last_quarter_ = 0;  // off a terminal: a line at 25, 50, 75 and 100%
};

// A full model with every expert and its AdamW moments, in one process.
struct Full {
  CheckpointMeta meta;
  bool has_optimizer = false;
  // The step and seed for safetensors metadata: meta's for a checkpoint; a model.h5's `step` and
  // `seed` attributes (meta keeps step 0 for it: no loader position goes with them); none for an
  // older model.h5 without them.
  std::optional<int64_t> step, seed;
  LocalDispatcher disp;
  LM lm;
  AdamW opt;
  int region[kNumRegions] = {-1, -1};

  explicit Full(const CheckpointMeta& m) : meta(m), disp(m.model.experts), lm(m.model, disp), opt(AdamWConfig{}) {
    ParamStore& ps = lm.params();
    for (Region r : {Region::Dense, Region::Expert}) {
      const int64_t n = ps.region_numel(r);
      if (n > 0)
        region[int(r)] = opt.add_region(static_cast<float*>(ps.region_data(r)),
                                        static_cast<const float*>(ps.region_grad(r)), n, {{0, n, true}});
    }
  }
  // Every parameter at full shape (experts as (E, ...)); moments only when `moments`.
  std::vector<TensorRef> full_refs(bool moments) {
    std::vector<TensorRef> out;
    ParamStore& ps = lm.params();
    for (const ParamInfo& i : ps.infos()) {
      TensorRef t{i.name, std::vector<int64_t>(i.shape.d.begin(), i.shape.d.begin() + i.shape.ndim),
                  static_cast<float*>(ps.region_data(i.region)) + i.offset, nullptr, nullptr};
      if (moments) {
        t.m = opt.m(region[int(i.region)]) + i.offset;
        t.v = opt.v(region[int(i.region)]) + i.offset;
      }
      out.push_back(std::move(t));
    }
    return out;
  }
  std::vector<TensorRef> dense(bool moments) {
    return dense_refs(lm.params(), moments ? &opt : nullptr, region[int(Region::Dense)]);
  }
  std::vector<ExpertRef> experts(bool moments) {
    return expert_refs(lm.params(), moments ? &opt : nullptr, region[int(Region::Expert)], 0);
  }
};

std::unique_ptr<Full> read_sharded(const std::string& dir) {
  CheckpointMeta meta = read_checkpoint_meta(dir);
  auto full = std::make_unique<Full>(meta);
  full->step = meta.step, full->seed = meta.seed;
  // A sharded checkpoint written with --no-optimizer has no adam groups in meta.h5.
  {
    const std::string path = (fs::path(dir) / "meta.h5").string();
    h5::Handle f = h5::open_file(path);
    full->has_optimizer = h5::read_attr_int(f.id, path, "has_optimizer") != 0;
  }
  Progress bar("read");
  read_checkpoint_tensors(dir, meta, full->dense(full->has_optimizer), full->experts(full->has_optimizer),
                          std::ref(bar));
  return full;
}

// A consolidated file from `anyk convert`, or a plain model.h5 (weights only; its step and seed
// when the trainer recorded them).
std::unique_ptr<Full> read_consolidated(const std::string& path) {
  h5::Handle f = h5::open_file(path);
  const std::string format = h5::read_attr_string(f.id, path, "format");
  ANYK_CHECK(format == "anyk-weights", path << " has format '" << format << "', expected 'anyk-weights' (a "
                                            << "consolidated checkpoint or a model.h5)"
                                            << (format == "anyk-checkpoint" ? " hint: pass the step directory" : ""));
  const int64_t version = h5::read_attr_int(f.id, path, "version");
  ANYK_CHECK(version == 1, path << ": unknown weights format version " << version
                                << " (attribute 'version'); this anyk reads version 1");
  CheckpointMeta meta;
  meta.model = h5::read_model_attrs(f.id, path);
  meta.model.validate();
  h5::check_params_fit(meta.model, file_bytes(path), path, "the file holds",
                       "the file is corrupt; convert it again from its checkpoint");
  const bool consolidated = h5::attr_exists(f.id, "kind") && h5::read_attr_string(f.id, path, "kind") == "consolidated";
  if (consolidated) {
    read_run_state_attrs(f.id, path, meta);
  }
  auto full = std::make_unique<Full>(meta);
  if (consolidated) {
    full->step = meta.step, full->seed = meta.seed;
  } else if (h5::attr_exists(f.id, "step") && h5::attr_exists(f.id, "seed")) {  // a model.h5 from anyk train
    full->step = h5::read_attr_int(f.id, path, "step");
    full->seed = h5::read_attr_int(f.id, path, "seed");
  }
  full->has_optimizer = consolidated && h5::read_attr_int(f.id, path, "has_optimizer") != 0;
  std::vector<TensorRef> refs = full->full_refs(full->has_optimizer);
  Progress bar("read");
  for (size_t i = 0; i < refs.size(); ++i) {
    const TensorRef& t = refs[i];
    h5::read_f32(f.id, path, t.name, t.value, t.shape);
    if (t.m) h5::read_f32(f.id, path, "adam_m/" + t.name, t.m, t.shape);
    if (t.v) h5::read_f32(f.id, path, "adam_v/" + t.name, t.v, t.shape);
    bar(int64_t(i + 1), int64_t(refs.size()));
  }
  return full;
}

// Moves the finished tmp (file or directory) to out. An existing out (only with --overwrite) is
// renamed to out.old.tmp first and removed once the new one is in place, so at every moment one
// complete version exists under out or out.old.tmp.
void replace_with(const std::string& tmp, const std::string& out) {
  std::error_code ec;
  const std::string old = out + ".old.tmp";
  const bool had = fs::exists(fs::symlink_status(out));
  if (had) {
    fs::remove_all(old, ec);
    fs::rename(out, old, ec);
    if (ec) {
      remove_quietly(tmp);
      fail_io("moving aside the existing", out, ec.value());
    }
  }
  fs::rename(tmp, out, ec);
  if (ec) {
    const int err = ec.value();
    if (had) fs::rename(old, out, ec);
    remove_quietly(tmp);
    fail_io("renaming " + tmp + " to", out, err);
  }
  if (had) remove_quietly(old);
  const fs::path parent = fs::path(out).parent_path();
  h5::fsync_path(parent.empty() ? "." : parent.string());
}

void write_consolidated(Full& full, const std::string& out, bool moments) {
  std::vector<TensorRef> refs = full.full_refs(moments);
  Progress bar("write");
  write_file_atomic(out, [&](const std::string& tmp) {
    h5::write_file(tmp, [&](hid_t f) {
      // The model.h5 header first, so load_weights and `anyk eval --weights` read this file.
      h5::write_attr(f, tmp, "format", "anyk-weights");
      h5::write_attr(f, tmp, "version", int64_t(1));
      h5::write_model_attrs(f, tmp, full.meta.model);
      h5::write_attr(f, tmp, "kind", "consolidated");
      h5::write_attr(f, tmp, "checksum", "crc32");
      write_run_state_attrs(f, tmp, full.meta);
      h5::write_attr(f, tmp, "has_optimizer", int64_t(moments ? 1 : 0));
      h5::Handle gm, gv;
      if (moments) {
        gm = h5::create_group(f, tmp, "adam_m");
        gv = h5::create_group(f, tmp, "adam_v");
      }
      for (size_t i = 0; i < refs.size(); ++i) {
        const TensorRef& t = refs[i];
        h5::write_f32(f, tmp, t.name, t.value, t.shape);
        if (moments) {
          h5::write_f32(gm.id, tmp, t.name, t.m, t.shape);
          h5::write_f32(gv.id, tmp, t.name, t.v, t.shape);
        }
        bar(int64_t(i + 1), int64_t(refs.size()));
      }
    });
  });
}

// Writes a directory as out.tmp through fill(tmp), fsyncs it and renames it to out; a failure
// removes out.tmp and leaves out as it was.
template <class F> void write_directory(const std::string& out, F&& fill) {
  const fs::path tmp = out + ".tmp";
  fs::remove_all(tmp);
  std::error_code ec;
  fs::create_directories(tmp, ec);
  if (ec) fail_io("creating directory", tmp.string(), ec.value());
  try {
    fill(tmp);
    h5::fsync_path(tmp.string());
  } catch (...) {
    remove_quietly(tmp.string());
    throw;
  }
  replace_with(tmp.string(), out);
}

void write_sharded(Full& full, const std::string& out, int ep, bool moments) {
  const int E = full.meta.model.experts;
  ANYK_CHECK(E % ep == 0, "--to ep=" << ep << " does not divide the " << E << " experts hint: use a divisor of " << E);
  write_directory(out, [&](const fs::path& tmp) {
    CheckpointMeta meta = full.meta;
    meta.ep_size = ep;
    meta.world_size = ep;  // as if written by ep ranks with ep = world
    Progress bar("write");
    write_meta_file((tmp / "meta.h5").string(), meta, full.dense(moments));
    bar(1, ep + 1);
    const std::vector<ExpertRef> all = full.experts(moments);
    const int E_local = E / ep;
    for (int r = 0; r < ep; ++r) {
      std::vector<ExpertRef> mine;
      for (const ExpertRef& x : all)
        if (x.expert / E_local == r) mine.push_back(x);
      write_experts_file((tmp / ("experts_" + std::to_string(r) + ".h5")).string(), meta, r, mine);
      bar(r + 2, ep + 1);
    }
  });
}

std::string shortest(double v) {
  char buf[64];
  return std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
}

// The safetensors metadata: string copies of the model attributes, step and seed.
Json safetensors_metadata(const Full& full) {
  const ModelConfig& c = full.meta.model;
  Json meta = {{"format", "pt"}, {"producer", "anyk convert"}};  // values must be strings
  for (auto [k, v] : {std::pair<const char*, int64_t>{"vocab", c.vocab}, {"dim", c.dim}, {"layers", c.layers},
                      {"heads", c.heads}, {"experts", c.experts}, {"expert_hidden", c.expert_hidden},
                      {"seq_len", c.seq_len}})
    meta[k] = std::to_string(v);
  meta["rope_theta"] = shortest(c.rope_theta);
  meta["norm_eps"] = shortest(c.norm_eps);
  meta["router_renormalize"] = c.router.renormalize ? "1" : "0";
  // Left out, not written as 0, when the source does not record them (an older model.h5).
  if (full.step) meta["step"] = std::to_string(*full.step);
  if (full.seed) meta["seed"] = std::to_string(*full.seed);
  return meta;
}

void write_safetensors(Full& full, const std::string& out) {
  std::vector<SafetensorsTensor> tensors;
  for (const TensorRef& t : full.full_refs(false)) tensors.push_back({t.name, t.shape, t.value});
  const Json meta = safetensors_metadata(full);
  write_file_atomic(out, [&](const std::string& tmp) {
    Progress bar("write");
    write_safetensors_f32(tmp, meta, tensors, std::ref(bar));
  });
}

void write_gguf(Full& full, const std::string& out, const GGUFExport& opt) {
  std::map<std::string, const float*> by_name;
  for (const TensorRef& t : full.full_refs(false)) by_name[t.name] = t.value;
  write_llama_gguf(full.meta.model, [&](const std::string& name) {
    auto it = by_name.find(name);
    ANYK_CHECK(it != by_name.end(), "--to gguf: the model has no parameter " << name);
    return it->second;
  }, opt, out);
}

// A Hugging Face Mixtral directory, written as out.tmp and renamed to out when complete.
void write_hf(Full& full, const std::string& out, int k, const std::string& tokenizer) {
  std::map<std::string, const float*> by_name;
  for (const TensorRef& t : full.full_refs(false)) by_name[t.name] = t.value;
  write_directory(out, [&](const fs::path& tmp) {
    write_hf_mixtral(full.meta.model, [&](const std::string& name) { return by_name.at(name); }, k, tmp.string());
    if (!tokenizer.empty()) fs::copy_file(tokenizer, tmp / "tokenizer.model");  // SentencePiece, as Mixtral's
  });
}

}  // namespace

ConvertSummary convert_checkpoint(const std::string& checkpoint, const std::string& to, int ep,
                                  const std::string& out, bool no_optimizer, const GGUFExport& gguf) {
  std::unique_ptr<Full> full;
  ConvertSummary sum;
  const bool run_dir = fs::is_directory(checkpoint) && fs::is_regular_file(fs::path(checkpoint) / "model.h5") &&
                       !fs::is_regular_file(fs::path(checkpoint) / "meta.h5");
  if (run_dir) {
    sum.source = (fs::path(checkpoint) / "model.h5").string();
    full = read_consolidated(sum.source);
  } else if (fs::is_regular_file(checkpoint) && fs::path(checkpoint).filename() != "latest") {
    sum.source = checkpoint;
    full = read_consolidated(checkpoint);
  } else {
    sum.source = resolve_checkpoint(checkpoint, "");
    full = read_sharded(sum.source);
  }
  sum.moments = full->has_optimizer && !no_optimizer;
  if (ep > 0 && !full->has_optimizer && !no_optimizer)
    ANYK_FAIL(sum.source << " has no optimizer state, so a resumable ep=" << ep << " checkpoint cannot be made from "
                         << "it hint: pass --no-optimizer for a weights-only one");
  if (to == "consolidated")
    write_consolidated(*full, out, sum.moments);
  else if (to == "safetensors")
    write_safetensors(*full, out);
  else if (to == "gguf")
    write_gguf(*full, out, gguf);
  else if (to == "hf")
    write_hf(*full, out, gguf.k, gguf.tokenizer);
  else
    write_sharded(*full, out, ep, sum.moments);
  sum.step = full->step.value_or(-1);
  sum.experts = full->meta.model.experts;
  sum.ep_size = full->meta.ep_size;
  return sum;
}

}  // namespace anyk::io
