// HDF5 weights file (see weights.h). Every HDF5 call goes through H5_CHECK, which throws an
// anyk::Error naming the file and the dataset or attribute involved; HDF5's own error stack
// printing is switched off so the user sees one line.
#include "launch/weights.h"

#include <hdf5.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "runtime/check.h"

namespace anyk::launch {

namespace {

#define H5_CHECK(expr, what)                                                                  \
  [&]() {                                                                                     \
    auto anyk_h5_r_ = (expr);                                                                 \
    ANYK_CHECK(anyk_h5_r_ >= 0, "HDF5 call failed: " << #expr << " (" << what << ")"          \
                                                      << " hint: is the file a complete anyk " \
                                                         "weights file on a writable disk?");  \
    return anyk_h5_r_;                                                                        \
  }()

// Closes an HDF5 handle at scope exit (H5Oclose-style closers differ per handle kind).
struct Handle {
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  Handle(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() {
    if (id >= 0 && close) close(id);
  }
};

void quiet_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

void write_attr_string(hid_t loc, const std::string& file, const char* name, const std::string& v) {
  std::string what = "file " + file + ", attribute " + name;
  Handle type(H5_CHECK(H5Tcopy(H5T_C_S1), what), H5Tclose);
  H5_CHECK(H5Tset_size(type.id, v.size() ? v.size() : 1), what);
  H5_CHECK(H5Tset_strpad(type.id, H5T_STR_NULLTERM), what);
  Handle space(H5_CHECK(H5Screate(H5S_SCALAR), what), H5Sclose);
  Handle attr(H5_CHECK(H5Acreate2(loc, name, type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), what),
              H5Aclose);
  H5_CHECK(H5Awrite(attr.id, type.id, v.c_str()), what);
}

template <class T> void write_attr_num(hid_t loc, const std::string& file, const char* name, T v) {
  std::string what = "file " + file + ", attribute " + name;
  hid_t mem = std::is_floating_point_v<T> ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT64;
  hid_t disk = std::is_floating_point_v<T> ? H5T_IEEE_F64LE : H5T_STD_I64LE;
  Handle space(H5_CHECK(H5Screate(H5S_SCALAR), what), H5Sclose);
  Handle attr(H5_CHECK(H5Acreate2(loc, name, disk, space.id, H5P_DEFAULT, H5P_DEFAULT), what),
              H5Aclose);
  if constexpr (std::is_floating_point_v<T>) {
    double d = double(v);
    H5_CHECK(H5Awrite(attr.id, mem, &d), what);
  } else {
    int64_t i = int64_t(v);
    H5_CHECK(H5Awrite(attr.id, mem, &i), what);
  }
}

std::string read_attr_string(hid_t loc, const std::string& file, const char* name) {
  std::string what = "file " + file + ", attribute " + name;
  ANYK_CHECK(H5Aexists(loc, name) > 0,
             file << " has no attribute '" << name << "' hint: it is not an anyk weights file");
  Handle attr(H5_CHECK(H5Aopen(loc, name, H5P_DEFAULT), what), H5Aclose);
  Handle type(H5_CHECK(H5Aget_type(attr.id), what), H5Tclose);
  ANYK_CHECK(H5Tget_class(type.id) == H5T_STRING,
             file << ": attribute '" << name << "' is not a string");
  size_t n = H5Tget_size(type.id);
  std::vector<char> buf(n + 1, 0);
  Handle mem(H5_CHECK(H5Tcopy(H5T_C_S1), what), H5Tclose);
  H5_CHECK(H5Tset_size(mem.id, n + 1), what);
  H5_CHECK(H5Aread(attr.id, mem.id, buf.data()), what);
  return std::string(buf.data());
}

int64_t read_attr_int(hid_t loc, const std::string& file, const char* name) {
  std::string what = "file " + file + ", attribute " + name;
  ANYK_CHECK(H5Aexists(loc, name) > 0,
             file << " has no attribute '" << name << "' hint: it is not an anyk weights file");
  Handle attr(H5_CHECK(H5Aopen(loc, name, H5P_DEFAULT), what), H5Aclose);
  int64_t v = 0;
  H5_CHECK(H5Aread(attr.id, H5T_NATIVE_INT64, &v), what);
  return v;
}

}  // namespace

void save_weights(const std::string& path, const LM& lm) {
  quiet_hdf5();
  const ParamStore& ps = lm.params();
  ANYK_CHECK(ps.dtype() == DType::F32, "save_weights: only float32 models are supported");
  const std::string tmp = path + ".tmp";
  {
    Handle f(H5_CHECK(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                      "creating file " + tmp),
             H5Fclose);
    const ModelConfig& c = lm.config();
    write_attr_string(f.id, tmp, "format", "anyk-weights");
    write_attr_num(f.id, tmp, "version", 1);
    write_attr_num(f.id, tmp, "vocab", c.vocab);
    write_attr_num(f.id, tmp, "dim", c.dim);
    write_attr_num(f.id, tmp, "layers", c.layers);
    write_attr_num(f.id, tmp, "heads", c.heads);
    write_attr_num(f.id, tmp, "experts", c.experts);
    write_attr_num(f.id, tmp, "expert_hidden", c.expert_hidden);
    write_attr_num(f.id, tmp, "seq_len", c.seq_len);
    write_attr_num(f.id, tmp, "rope_theta", c.rope_theta);
    write_attr_num(f.id, tmp, "norm_eps", c.norm_eps);
    write_attr_num(f.id, tmp, "init_std", c.init_std);
    write_attr_num(f.id, tmp, "router_renormalize", c.router.renormalize ? 1 : 0);
    write_attr_num(f.id, tmp, "router_lb_coef", c.router.lb_coef);
    write_attr_num(f.id, tmp, "router_z_coef", c.router.z_coef);
    write_attr_num(f.id, tmp, "router_kl_coef", c.router.kl_coef);
    for (int id = 0; id < ps.size(); ++id) {
      const ParamInfo& info = ps.info(id);
      std::string what = "file " + tmp + ", dataset " + info.name;
      hsize_t dims[4];
      for (int i = 0; i < info.shape.ndim; ++i) dims[i] = hsize_t(info.shape.d[i]);
      Handle space(H5_CHECK(H5Screate_simple(info.shape.ndim, dims, nullptr), what), H5Sclose);
      // Names hold dots ("layers.0.ln1"), not slashes, so every dataset sits in the root group.
      Handle ds(H5_CHECK(H5Dcreate2(f.id, info.name.c_str(), H5T_IEEE_F32LE, space.id, H5P_DEFAULT,
                                    H5P_DEFAULT, H5P_DEFAULT),
                         what),
                H5Dclose);
      H5_CHECK(H5Dwrite(ds.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, ps.value(id).data),
               what);
    }
    H5_CHECK(H5Fflush(f.id, H5F_SCOPE_GLOBAL), "flushing file " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  ANYK_CHECK(!ec, "cannot rename " << tmp << " to " << path << ": " << ec.message());
}

void load_weights(const std::string& path, LM& lm) {
  quiet_hdf5();
  ParamStore& ps = lm.params();
  ANYK_CHECK(std::filesystem::is_regular_file(path),
             "weights file " << path << " not found hint: train a model into this run dir first");
  Handle f(H5_CHECK(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "opening file " + path),
           H5Fclose);
  std::string format = read_attr_string(f.id, path, "format");
  ANYK_CHECK(format == "anyk-weights",
             path << " has format '" << format << "', expected 'anyk-weights'");
  int64_t version = read_attr_int(f.id, path, "version");
  ANYK_CHECK(version == 1, path << " has weights format version " << version
                                << "; this anyk reads version 1 hint: use a matching anyk build");
  for (int id = 0; id < ps.size(); ++id) {
    const ParamInfo& info = ps.info(id);
    std::string what = "file " + path + ", dataset " + info.name;
    ANYK_CHECK(H5Lexists(f.id, info.name.c_str(), H5P_DEFAULT) > 0,
               path << " has no dataset '" << info.name
                    << "' hint: the run's config.ini does not match its model.h5");
    Handle ds(H5_CHECK(H5Dopen2(f.id, info.name.c_str(), H5P_DEFAULT), what), H5Dclose);
    Handle space(H5_CHECK(H5Dget_space(ds.id), what), H5Sclose);
    int nd = H5_CHECK(H5Sget_simple_extent_ndims(space.id), what);
    hsize_t dims[8] = {0};
    bool same = nd == info.shape.ndim && nd <= 8;
    if (same) {
      H5_CHECK(H5Sget_simple_extent_dims(space.id, dims, nullptr), what);
      for (int i = 0; i < nd; ++i) same = same && dims[i] == hsize_t(info.shape.d[i]);
    }
    if (!same) {
      std::string got = "(";
      if (nd <= 8) {
        H5Sget_simple_extent_dims(space.id, dims, nullptr);
        for (int i = 0; i < nd; ++i) got += (i ? "," : "") + std::to_string(dims[i]);
      }
      got += ")";
      ANYK_FAIL(path << ": dataset '" << info.name << "' has shape " << got << " but the config needs "
                     << info.shape.str() << " hint: the run's config.ini does not match its model.h5");
    }
    H5_CHECK(H5Dread(ds.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, ps.value(id).data),
             what);
  }
}

}  // namespace anyk::launch
