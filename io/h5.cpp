// HDF5 helpers; see h5.h.
#include "io/h5.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <bit>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <iomanip>

#include "io/fsio.h"

namespace anyk::io::h5 {

static_assert(std::endian::native == std::endian::little,
              "checksums are defined over little-endian float32 bytes");

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id = o.id;
    close = o.close;
    o.id = -1;
  }
  return *this;
}

void Handle::reset() {
  if (id >= 0 && close) close(id);
  id = -1;
}

void quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

void disable_atexit() { H5dont_atexit(); }

namespace {

thread_local int g_last_errno = 0;

// Looks for the "errno = N" that HDF5's sec2 driver writes into its error description.
herr_t find_errno(unsigned, const H5E_error2_t* e, void* out) {
  if (e && e->desc) {
    if (const char* p = std::strstr(e->desc, "errno = ")) {
      const int v = std::atoi(p + 8);
      if (v > 0) *static_cast<int*>(out) = v;
    }
  }
  return 0;
}

}  // namespace

std::string failure_detail() {
  int err = 0;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, find_errno, &err);
  g_last_errno = err;
  return err ? std::string(": ") + std::strerror(err) : std::string();
}

int last_errno() { return g_last_errno; }
void clear_last_errno() { g_last_errno = 0; }

void write_file(const std::string& path, const std::function<void(hid_t)>& body) {
  clear_last_errno();
  // The file id is held here, not in a Handle: it must be closed exactly once (a second H5Fclose
  // of a file whose close failed crashes HDF5 1.10), after the objects inside it.
  hid_t fid = -1;
  try {
    {
      Handle f = create_file(path);
      fid = f.id;
      f.id = -1;
    }
    body(fid);
    H5_CHECK(H5Fflush(fid, H5F_SCOPE_GLOBAL), "flushing file " + path);
    const hid_t id = fid;
    fid = -1;
    H5_CHECK(H5Fclose(id), "closing file " + path);
    fsync_path(path);
  } catch (...) {  // anyk errors, and anything else (a bad_alloc): the same cleanup
    int err = last_errno();
    if (fid >= 0) {
      // Close whatever the body left open, children before the file.
      for (unsigned kind : {unsigned(H5F_OBJ_ATTR), unsigned(H5F_OBJ_DATASET), unsigned(H5F_OBJ_GROUP),
                            unsigned(H5F_OBJ_DATATYPE)}) {
        const ssize_t n = H5Fget_obj_count(fid, kind | H5F_OBJ_LOCAL);
        if (n <= 0) continue;
        std::vector<hid_t> ids(static_cast<size_t>(n));
        const ssize_t got = H5Fget_obj_ids(fid, kind | H5F_OBJ_LOCAL, size_t(n), ids.data());
        for (ssize_t i = 0; i < got; ++i) kind == H5F_OBJ_ATTR ? H5Aclose(ids[size_t(i)]) : H5Oclose(ids[size_t(i)]);
      }
      H5Fclose(fid);  // may fail again on a full disk: the handle stays, exit-time cleanup is off
    }
    std::error_code ec;
    std::filesystem::remove(path, ec);
    if (err == 0) err = guess_write_errno(path);
    if (err != 0) fail_io("writing", path, err);
    throw;
  }
}

Handle create_file(const std::string& path) {
  quiet();
  const std::string what = "creating file " + path;
  Handle fapl(H5_CHECK(H5Pcreate(H5P_FILE_ACCESS), what), H5Pclose);
  H5_CHECK(H5Pset_libver_bounds(fapl.id, H5F_LIBVER_V18, H5F_LIBVER_LATEST), what);
  return Handle(H5_CHECK(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id), what), H5Fclose);
}

// HDF5 could not open path: say what the file is instead, from its first bytes. An HDF5
// signature means a damaged file (cut short: not completely written); a safetensors or other
// file is the wrong format, not a damaged one.
[[noreturn]] static void fail_not_hdf5(const std::string& path) {
  unsigned char head[16] = {0};
  size_t n = 0;
  if (std::FILE* in = std::fopen(path.c_str(), "rb")) {
    n = std::fread(head, 1, sizeof head, in);
    std::fclose(in);
  }
  static const unsigned char kSig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  if (n >= 8 && std::memcmp(head, kSig, 8) == 0)
    ANYK_FAIL("cannot open " << path
                             << ": an HDF5 file that is truncated or corrupt hint: it was not completely written; "
                                "use an older checkpoint, or convert or copy it again");
  uint64_t len = 0;
  for (int i = 0; i < 8; ++i) len |= uint64_t(head[i]) << (8 * i);
  if (n >= 9 && head[8] == '{' && len > 1 && len < (uint64_t(1) << 32))
    ANYK_FAIL(path << " is a safetensors file, but anyk reads its weights from HDF5 (an anyk model.h5 or a "
                      "consolidated .h5) hint: pass the model.h5 or checkpoint it was converted from; safetensors "
                      "is an export format (anyk convert --to safetensors)");
  ANYK_FAIL(path << (n == 0 ? " is empty" : " is not an HDF5 file")
                 << ", so not an anyk weights or checkpoint file hint: pass an anyk model.h5, a consolidated .h5 "
                    "from anyk convert, or a checkpoint step directory");
}

Handle open_file(const std::string& path) {
  quiet();
  ANYK_CHECK(std::filesystem::is_regular_file(path), path << " not found");
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) fail_not_hdf5(path);
  return Handle(f, H5Fclose);
}

Handle create_group(hid_t loc, const std::string& file, const std::string& name) {
  return Handle(H5_CHECK(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                         "file " + file + ", creating group " + name),
                H5Gclose);
}

Handle open_group(hid_t loc, const std::string& file, const std::string& name) {
  ANYK_CHECK(link_exists(loc, name), file << " has no group '" << name << "'");
  return Handle(H5_CHECK(H5Gopen2(loc, name.c_str(), H5P_DEFAULT), "file " + file + ", group " + name),
                H5Gclose);
}

bool link_exists(hid_t loc, const std::string& name) {
  // H5Lexists fails (rather than returning false) when an intermediate group is missing, so
  // walk the path one component at a time.
  size_t pos = 0;
  while (true) {
    size_t slash = name.find('/', pos);
    std::string prefix = name.substr(0, slash);
    if (H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) return true;
    pos = slash + 1;
  }
}

bool attr_exists(hid_t loc, const std::string& name) { return H5Aexists(loc, name.c_str()) > 0; }

void write_attr(hid_t loc, const std::string& file, const char* name, const std::string& v) {
  const std::string what = "file " + file + ", attribute " + name;
  Handle type(H5_CHECK(H5Tcopy(H5T_C_S1), what), H5Tclose);
  H5_CHECK(H5Tset_size(type.id, v.size() ? v.size() : 1), what);
  H5_CHECK(H5Tset_strpad(type.id, H5T_STR_NULLTERM), what);
  Handle space(H5_CHECK(H5Screate(H5S_SCALAR), what), H5Sclose);
  Handle attr(H5_CHECK(H5Acreate2(loc, name, type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), what), H5Aclose);
  const std::string padded = v.empty() ? std::string(1, '\0') : v;
  H5_CHECK(H5Awrite(attr.id, type.id, padded.c_str()), what);
}

void write_attr(hid_t loc, const std::string& file, const char* name, const char* v) {
  write_attr(loc, file, name, std::string(v));
}

void write_attr(hid_t loc, const std::string& file, const char* name, int64_t v) {
  const std::string what = "file " + file + ", attribute " + name;
  Handle space(H5_CHECK(H5Screate(H5S_SCALAR), what), H5Sclose);
  Handle attr(H5_CHECK(H5Acreate2(loc, name, H5T_STD_I64LE, space.id, H5P_DEFAULT, H5P_DEFAULT), what),
              H5Aclose);
  H5_CHECK(H5Awrite(attr.id, H5T_NATIVE_INT64, &v), what);
}

void write_attr(hid_t loc, const std::string& file, const char* name, double v) {
  const std::string what = "file " + file + ", attribute " + name;
  Handle space(H5_CHECK(H5Screate(H5S_SCALAR), what), H5Sclose);
  Handle attr(H5_CHECK(H5Acreate2(loc, name, H5T_IEEE_F64LE, space.id, H5P_DEFAULT, H5P_DEFAULT), what),
              H5Aclose);
  H5_CHECK(H5Awrite(attr.id, H5T_NATIVE_DOUBLE, &v), what);
}

namespace {

Handle open_attr(hid_t loc, const std::string& file, const char* name) {
  ANYK_CHECK(H5Aexists(loc, name) > 0,
             file << " has no attribute '" << name << "' hint: it is not a complete file of this anyk format");
  return Handle(H5_CHECK(H5Aopen(loc, name, H5P_DEFAULT), "file " + file + ", attribute " + name), H5Aclose);
}

}  // namespace

std::string read_attr_string(hid_t loc, const std::string& file, const char* name) {
  const std::string what = "file " + file + ", attribute " + name;
  Handle attr = open_attr(loc, file, name);
  Handle type(H5_CHECK(H5Aget_type(attr.id), what), H5Tclose);
  ANYK_CHECK(H5Tget_class(type.id) == H5T_STRING, file << ": attribute '" << name << "' is not a string");
  ANYK_CHECK(H5Tis_variable_str(type.id) <= 0,
             file << ": attribute '" << name << "' is a variable-length string; anyk writes fixed-length ones");
  size_t n = H5Tget_size(type.id);
  // The size comes from the file: bound it before allocating (anyk's strings are a few KiB).
  ANYK_CHECK(n >= 1 && n <= (size_t(1) << 26), file << ": attribute '" << name << "' claims a string of " << n
                                                    << " bytes hint: the file is corrupt");
  std::vector<char> buf(n + 1, 0);
  Handle mem(H5_CHECK(H5Tcopy(H5T_C_S1), what), H5Tclose);
  H5_CHECK(H5Tset_size(mem.id, n + 1), what);
  H5_CHECK(H5Aread(attr.id, mem.id, buf.data()), what);
  return std::string(buf.data());
}

int64_t read_attr_int(hid_t loc, const std::string& file, const char* name) {
  const std::string what = "file " + file + ", attribute " + name;
  Handle attr = open_attr(loc, file, name);
  int64_t v = 0;
  H5_CHECK(H5Aread(attr.id, H5T_NATIVE_INT64, &v), what);
  return v;
}

double read_attr_double(hid_t loc, const std::string& file, const char* name) {
  const std::string what = "file " + file + ", attribute " + name;
  Handle attr = open_attr(loc, file, name);
  double v = 0;
  H5_CHECK(H5Aread(attr.id, H5T_NATIVE_DOUBLE, &v), what);
  return v;
}

uint32_t crc32(const void* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + ")";
}

void write_f32(hid_t loc, const std::string& file, const std::string& name, const float* data,
               const std::vector<int64_t>& shape) {
  const std::string what = "file " + file + ", dataset " + name;
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  Handle space(H5_CHECK(H5Screate_simple(int(dims.size()), dims.data(), nullptr), what), H5Sclose);
  Handle ds(H5_CHECK(H5Dcreate2(loc, name.c_str(), H5T_IEEE_F32LE, space.id, H5P_DEFAULT, H5P_DEFAULT,
                                H5P_DEFAULT),
                     what),
            H5Dclose);
  H5_CHECK(H5Dwrite(ds.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
  const uint32_t c = crc32(data, size_t(n) * sizeof(float));
  Handle aspace(H5_CHECK(H5Screate(H5S_SCALAR), what), H5Sclose);
  Handle attr(H5_CHECK(H5Acreate2(ds.id, "crc32", H5T_STD_U32LE, aspace.id, H5P_DEFAULT, H5P_DEFAULT), what),
              H5Aclose);
  H5_CHECK(H5Awrite(attr.id, H5T_NATIVE_UINT32, &c), what);
}

std::vector<int64_t> dataset_shape(hid_t loc, const std::string& file, const std::string& name) {
  const std::string what = "file " + file + ", dataset " + name;
  ANYK_CHECK(link_exists(loc, name), file << " has no dataset '" << name << "' hint: the file is incomplete or "
                                                                            "belongs to another model");
  Handle ds(H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), what), H5Dclose);
  Handle space(H5_CHECK(H5Dget_space(ds.id), what), H5Sclose);
  int nd = H5_CHECK(H5Sget_simple_extent_ndims(space.id), what);
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  H5_CHECK(H5Sget_simple_extent_dims(space.id, dims.data(), nullptr), what);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

void read_f32(hid_t loc, const std::string& file, const std::string& name, float* out,
              const std::vector<int64_t>& shape) {
  const std::string what = "file " + file + ", dataset " + name;
  std::vector<int64_t> got = dataset_shape(loc, file, name);
  ANYK_CHECK(got == shape, file << ": dataset '" << name << "' has shape " << shape_str(got) << " but the model needs "
                                << shape_str(shape) << " hint: the file belongs to a model of another config");
  Handle ds(H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), what), H5Dclose);
  // anyk writes float32 only; another element type or size (from the file) would make HDF5
  // allocate a conversion buffer of that size before anything is checked.
  Handle type(H5_CHECK(H5Dget_type(ds.id), what), H5Tclose);
  ANYK_CHECK(H5Tget_class(type.id) == H5T_FLOAT && H5Tget_size(type.id) == sizeof(float),
             file << ": dataset '" << name << "' is not float32 hint: the file is corrupt or not written by anyk");
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  H5_CHECK(H5Dread(ds.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out), what);
  if (H5Aexists(ds.id, "crc32") > 0) {
    Handle attr(H5_CHECK(H5Aopen(ds.id, "crc32", H5P_DEFAULT), what + ", attribute crc32"), H5Aclose);
    uint32_t want = 0;
    H5_CHECK(H5Aread(attr.id, H5T_NATIVE_UINT32, &want), what + ", attribute crc32");
    const uint32_t have = crc32(out, size_t(n) * sizeof(float));
    if (have != want) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "stored crc32 %08x, computed %08x", want, have);
      ANYK_FAIL("checksum mismatch in " << file << ", dataset '" << name << "': " << buf
                                        << " hint: the file is corrupt; use an older checkpoint");
    }
  }
}

void write_model_attrs(hid_t loc, const std::string& file, const ModelConfig& c) {
  write_attr(loc, file, "vocab", int64_t(c.vocab));
  write_attr(loc, file, "dim", int64_t(c.dim));
  write_attr(loc, file, "layers", int64_t(c.layers));
  write_attr(loc, file, "heads", int64_t(c.heads));
  write_attr(loc, file, "experts", int64_t(c.experts));
  write_attr(loc, file, "expert_hidden", int64_t(c.expert_hidden));
  write_attr(loc, file, "seq_len", int64_t(c.seq_len));
  write_attr(loc, file, "rope_theta", c.rope_theta);
  write_attr(loc, file, "norm_eps", c.norm_eps);
  write_attr(loc, file, "init_std", c.init_std);
  write_attr(loc, file, "router_renormalize", int64_t(c.router.renormalize ? 1 : 0));
  write_attr(loc, file, "router_lb_coef", c.router.lb_coef);
  write_attr(loc, file, "router_z_coef", c.router.z_coef);
  write_attr(loc, file, "router_kl_coef", c.router.kl_coef);
}

ModelConfig read_model_attrs(hid_t loc, const std::string& file) {
  ModelConfig c;
  c.vocab = int(read_attr_int(loc, file, "vocab"));
  c.dim = int(read_attr_int(loc, file, "dim"));
  c.layers = int(read_attr_int(loc, file, "layers"));
  c.heads = int(read_attr_int(loc, file, "heads"));
  c.experts = int(read_attr_int(loc, file, "experts"));
  c.expert_hidden = int(read_attr_int(loc, file, "expert_hidden"));
  c.seq_len = int(read_attr_int(loc, file, "seq_len"));
  c.rope_theta = read_attr_double(loc, file, "rope_theta");
  c.norm_eps = read_attr_double(loc, file, "norm_eps");
  c.init_std = read_attr_double(loc, file, "init_std");
  c.router.renormalize = read_attr_int(loc, file, "router_renormalize") != 0;
  c.router.lb_coef = read_attr_double(loc, file, "router_lb_coef");
  c.router.z_coef = read_attr_double(loc, file, "router_z_coef");
  c.router.kl_coef = read_attr_double(loc, file, "router_kl_coef");
  c.router.top_p = 0.0;
  c.router.k_min = 1;
  return c;
}

void check_same_shape(const ModelConfig& saved, const ModelConfig& have, const std::string& file,
                      const std::string& have_what) {
  const std::pair<const char*, std::pair<int, int>> fields[] = {
      {"experts", {saved.experts, have.experts}},       {"dim", {saved.dim, have.dim}},
      {"layers", {saved.layers, have.layers}},          {"expert-hidden", {saved.expert_hidden, have.expert_hidden}},
      {"heads", {saved.heads, have.heads}},             {"vocab", {saved.vocab, have.vocab}},
      {"seq-len", {saved.seq_len, have.seq_len}},
  };
  for (const auto& [name, v] : fields)
    ANYK_CHECK(v.first == v.second, "config mismatch: " << file << " was saved with --" << name << " " << v.first
                                                        << " but " << have_what << " has --" << name << " "
                                                        << v.second << " hint: resume with the saved model shape");
}

void check_params_fit(const ModelConfig& c, int64_t stored_bytes, const std::string& file, const std::string& stored_in,
                      const std::string& hint) {
  const double C = c.dim, H = c.expert_hidden, E = c.experts;
  const double floats = double(c.vocab) * C + C + double(c.layers) * (2 * C + 4 * C * C + E * C + 3 * E * H * C);
  ANYK_CHECK(4 * floats <= double(stored_bytes),
             file << ": the model attributes (vocab " << c.vocab << ", dim " << c.dim << ", layers " << c.layers
                  << ", experts " << c.experts << ", expert_hidden " << c.expert_hidden << ") need "
                  << std::fixed << std::setprecision(0) << 4 * floats << " bytes of parameters, but "
                  << stored_in << " " << stored_bytes << " bytes hint: " << hint);
}

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_io("opening (to fsync)", path, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) fail_io("writing (fsync)", path, err);
}

}  // namespace anyk::io::h5
