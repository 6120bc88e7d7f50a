// HDF5 weights file (see weights.h), written and read through the helpers of launch/h5.h.
#include "io/weights.h"

#include <cerrno>
#include <cstdio>

#include "io/fsio.h"

#include <filesystem>
#include <string>
#include <vector>

#include "io/h5.h"
#include "core/check.h"

namespace anyk::io {

namespace {

std::vector<int64_t> dims_of(const Shape& s) { return std::vector<int64_t>(s.d.begin(), s.d.begin() + s.ndim); }

void check_weights_header(hid_t f, const std::string& path) {
  std::string format = h5::read_attr_string(f, path, "format");
  ANYK_CHECK(format == "anyk-weights", path << " has format '" << format << "', expected 'anyk-weights'"
                                            << (format == "anyk-checkpoint"
                                                    ? " hint: pass its directory as --checkpoint instead"
                                                    : ""));
  int64_t version = h5::read_attr_int(f, path, "version");
  ANYK_CHECK(version == 1, path << " has weights format version " << version
                                << "; this anyk reads version 1 hint: use a matching anyk build");
}

}  // namespace

void save_weights(const std::string& path, const LM& lm, std::optional<int64_t> step, std::optional<int64_t> seed,
                  const std::string& tokenizer_hash) {
  const ParamStore& ps = lm.params();
  ANYK_CHECK(ps.dtype() == DType::F32, "save_weights: only float32 models are supported");
  write_file_atomic(path, [&](const std::string& tmp) {
    h5::write_file(tmp, [&](hid_t f) {
      h5::write_attr(f, tmp, "format", "anyk-weights");
      h5::write_attr(f, tmp, "version", int64_t(1));
      h5::write_model_attrs(f, tmp, lm.config());
      if (step) h5::write_attr(f, tmp, "step", *step);
      if (seed) h5::write_attr(f, tmp, "seed", *seed);
      if (!tokenizer_hash.empty()) h5::write_attr(f, tmp, "tokenizer_hash", tokenizer_hash);
      // Names hold dots ("layers.0.ln1"), not slashes, so every dataset sits in the root group.
      // Device parameters are written from a host copy (the CPU's are written in place).
      std::vector<float> stage;
      for (int id = 0; id < ps.size(); ++id) {
        const Tensor v = ps.value(id);
        const float* host = v.device == Device::CPU ? v.ptr<float>() : nullptr;
        if (!host) stage = to_host_vector<float>(v), host = stage.data();
        h5::write_f32(f, tmp, ps.info(id).name, host, dims_of(ps.info(id).shape));
      }
    });
  });
}

std::string weights_tokenizer_hash(const std::string& path) {
  h5::Handle f = h5::open_file(path);
  if (!h5::attr_exists(f.id, "tokenizer_hash")) return "";
  return h5::read_attr_string(f.id, path, "tokenizer_hash");
}

void load_weights(const std::string& path, LM& lm) {
  ParamStore& ps = lm.params();
  ANYK_CHECK(std::filesystem::is_regular_file(path),
             "weights file " << path << " not found hint: train a model into this run dir first");
  h5::Handle f = h5::open_file(path);
  check_weights_header(f.id, path);
  std::vector<float> stage;  // device parameters are read through a host copy
  for (int id = 0; id < ps.size(); ++id) {
    const ParamInfo& info = ps.info(id);
    ANYK_CHECK(h5::link_exists(f.id, info.name),
               path << " has no dataset '" << info.name << "' hint: the run's config.ini does not match its model.h5");
    const Tensor v = ps.value(id);
    if (v.device == Device::CPU) {
      h5::read_f32(f.id, path, info.name, v.ptr<float>(), dims_of(info.shape));
      continue;
    }
    stage.resize(size_t(v.numel()));
    h5::read_f32(f.id, path, info.name, stage.data(), dims_of(info.shape));
    from_host(v, stage.data());
  }
}

ModelConfig weights_config(const std::string& path) {
  h5::Handle f = h5::open_file(path);
  check_weights_header(f.id, path);
  ModelConfig c = h5::read_model_attrs(f.id, path);
  h5::check_params_fit(c, file_bytes(path), path, "the file holds",
                       "the file is corrupt; download or convert it again");
  return c;
}

}  // namespace anyk::io
