// The small HDF5 C-API layer shared by the weights file, the sharded checkpoint and `anyk
// convert`: RAII handles, H5_CHECK (every failure throws naming the file and the dataset or
// attribute), scalar attributes, float32 datasets carrying a CRC-32 of their bytes, the model
// config as root attributes, and fsync for the atomic-rename protocol.
#pragma once
#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "core/check.h"

#define H5_CHECK(expr, what)                                                                       \
  [&]() {                                                                                          \
    auto anyk_h5_r_ = (expr);                                                                      \
    ANYK_CHECK(anyk_h5_r_ >= 0, "HDF5 call failed: " << #expr << " (" << what << ")"               \
                                                      << ::anyk::io::h5::failure_detail()      \
                                                      << " hint: is the file a complete anyk file " \
                                                         "on a readable, writable disk?");          \
    return anyk_h5_r_;                                                                             \
  }()

namespace anyk::io::h5 {

// Closes an HDF5 handle at scope exit (each handle kind has its own closer).
struct Handle {
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  Handle() = default;
  Handle(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id(o.id), close(o.close) { o.id = -1; }
  Handle& operator=(Handle&& o) noexcept;
  ~Handle() { reset(); }
  void reset();
};

// Switches off HDF5's own error-stack printing so the user sees our one line.
void quiet();

// Called by H5_CHECK when an HDF5 call fails, before anything else touches the error stack: finds
// the operating-system error behind it (HDF5's file driver records "errno = N"), remembers it
// for last_errno(), and returns ": <strerror text>" or "" when there is none.
std::string failure_detail();
// The errno found by the last failure_detail() on this thread (0: none), and a reset.
int last_errno();
void clear_last_errno();

// Writes the HDF5 file `path` (created, truncated) with body(file id), then flushes, closes and
// fsyncs it. On any failure every object still open in the file is closed in a defined order
// (attributes, datasets, groups, types, then the file), the file is removed, and the error reads
// `writing PATH: <errno text> (hint: ...)` when the cause is the operating system's (a full
// disk, a quota, a read-only file system), else the HDF5 error naming the object.
// Needs HDF5's exit-time cleanup off (disable_atexit()), so that a file whose close failed on a
// full disk is not closed a second time at exit.
void write_file(const std::string& path, const std::function<void(hid_t)>& body);
// Call before any other HDF5 call (anyk's main does).
void disable_atexit();

// Creates (truncating) a file in the HDF5 1.8 object format: metadata blocks carry HDF5's own
// checksums, and every HDF5 >= 1.8 (any h5py) reads it.
Handle create_file(const std::string& path);
// Opens read-only. A missing file, a truncated file or a non-HDF5 file is refused naming it.
Handle open_file(const std::string& path);
Handle create_group(hid_t loc, const std::string& file, const std::string& name);
Handle open_group(hid_t loc, const std::string& file, const std::string& name);
bool link_exists(hid_t loc, const std::string& name);  // name may be a path a/b/c
bool attr_exists(hid_t loc, const std::string& name);

void write_attr(hid_t loc, const std::string& file, const char* name, const std::string& v);
void write_attr(hid_t loc, const std::string& file, const char* name, const char* v);
void write_attr(hid_t loc, const std::string& file, const char* name, int64_t v);   // i64 LE
void write_attr(hid_t loc, const std::string& file, const char* name, double v);    // f64 LE
// Readers name the file (and `where`, the object holding the attribute) when it is missing.
std::string read_attr_string(hid_t loc, const std::string& file, const char* name);
int64_t read_attr_int(hid_t loc, const std::string& file, const char* name);
double read_attr_double(hid_t loc, const std::string& file, const char* name);

// CRC-32 (IEEE 802.3, reflected, as zlib.crc32 / binascii.crc32) of n bytes, continuing crc.
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

// A float32 little-endian dataset `name` (a path below loc) of the given shape, with a uint32
// attribute `crc32` holding the CRC-32 of its n*4 raw bytes in C order.
void write_f32(hid_t loc, const std::string& file, const std::string& name, const float* data,
               const std::vector<int64_t>& shape);
// Reads dataset `name` into out, refusing a missing dataset, another shape or a CRC mismatch
// (a dataset without a crc32 attribute, as in model.h5 files of older builds, is read as is).
void read_f32(hid_t loc, const std::string& file, const std::string& name, float* out,
              const std::vector<int64_t>& shape);
std::vector<int64_t> dataset_shape(hid_t loc, const std::string& file, const std::string& name);
std::string shape_str(const std::vector<int64_t>& shape);  // "(2,3)"

// The model config as root attributes (vocab, dim, layers, heads, experts, expert_hidden,
// seq_len, rope_theta, norm_eps, init_std, router_*), and back.
void write_model_attrs(hid_t loc, const std::string& file, const ModelConfig& c);
ModelConfig read_model_attrs(hid_t loc, const std::string& file);
// Refuses a config whose parameter shapes differ: names the file, the field (as its CLI option)
// and both values. `have_what` says where `have` comes from ("this run", "--config").
void check_same_shape(const ModelConfig& saved, const ModelConfig& have, const std::string& file,
                      const std::string& have_what);
// Every parameter is stored as float32, so a config (read from attributes) whose parameters need
// more than `stored_bytes` is corrupt: refused before anyone builds a model of that size, naming
// `file`, the fields, `stored_in` ("the file holds", "the checkpoint's files hold") and `hint`.
// Counted in double, in ModelConfig::num_params's terms, so no size overflows.
void check_params_fit(const ModelConfig& c, int64_t stored_bytes, const std::string& file, const std::string& stored_in,
                      const std::string& hint);

// fsync a file or a directory so a following rename is durable.
void fsync_path(const std::string& path);

}  // namespace anyk::io::h5
